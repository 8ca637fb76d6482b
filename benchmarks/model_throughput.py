"""Training throughput of the model presets on the CPU.

One training step = forward through the channel (AWGN, 10 dB) + pixel MSE backward +
SGD step, on a batch of real images (Fashion-MNIST 28x28x1 by default: the npz under
--data-dir, else the bundled sample; the pixel values do not change the cost). Prints per
preset the median samples/s and the achieved GFLOP/s, with FLOPs of one forward+backward
counted by torch.utils.flop_counter.FlopCounterMode (matmuls, convolutions, attention;
element-wise ops are not counted), against the nominal fp32 peak of the cores used (--peak, else computed from the CPU's
SIMD width and clock for --threads cores: psfl.utils.device.nominal_peak_gflops). The 1-minute load average is printed before and
after each preset because the machine is shared, with samples per CPU-second of the
process (with one thread this is the throughput of one fully owned core, a figure that
other jobs on the machine disturb much less than wall-clock time).

    OMP_NUM_THREADS=2 python benchmarks/model_throughput.py [--presets cpu-M cpu-L cpu-H cpu-CSC]
        [--batch 64] [--threads 2] [--steps 20] [--dataset fashion_mnist] [--data-dir DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode


def load_batch(dataset: str, data_dir: str | None, batch: int) -> torch.Tensor:
    from psfl.data import INPUT_PRESETS, load_dataset, prepare

    ds = load_dataset(dataset, data_dir=data_dir)
    x = prepare(ds, INPUT_PRESETS.get("native")).x_train[:batch]
    return x.contiguous()


def bench(name: str, x: torch.Tensor, steps: int, warmup: int, channels_last: bool) -> dict:
    from psfl.models import count_parameters, create_model

    torch.manual_seed(0)
    model = create_model(name, img_size=x.shape[-1], in_chans=x.shape[1])
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(0)

    def step() -> None:
        out = model(x, 10.0, generator=g)
        loss = (out.x_hat - x).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    counter = FlopCounterMode(display=False)
    with counter:
        out = model(x, 10.0, generator=g)
        (out.x_hat - x).pow(2).mean().backward()
    flops = counter.get_total_flops()
    for _ in range(warmup):
        step()
    load_before = os.getloadavg()[0]
    times, cpu = [], []
    for _ in range(steps):
        t, c = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    med = statistics.median(times)
    return {"preset": name, "params": count_parameters(model), "batch": x.shape[0],
            "input": list(x.shape[1:]), "median_step_s": med, "samples_per_s": x.shape[0] / med,
            "gflop_per_step": flops / 1e9, "gflop_per_s": flops / med / 1e9,
            "samples_per_cpu_s": x.shape[0] / statistics.median(cpu), "load_before": load_before, "load_after": os.getloadavg()[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["cpu-M", "cpu-L", "cpu-H", "cpu-CSC"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--data-dir")
    ap.add_argument("--peak", type=float, default=None, help="nominal peak GFLOP/s of the cores used")
    ap.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    from psfl.utils.device import nominal_peak_gflops

    how = "given (--peak)"
    if args.peak is None:
        args.peak, how = nominal_peak_gflops(args.threads)
    if not args.json:
        print(f"# nominal peak {args.peak:.0f} GFLOP/s = {how}")
    x = load_batch(args.dataset, args.data_dir, args.batch)
    rows = []
    for name in args.presets:
        r = bench(name, x, args.steps, args.warmup, args.channels_last)
        r["pct_of_peak"] = 100 * r["gflop_per_s"] / args.peak
        rows.append(r)
        if not args.json:
            shape = "x".join(map(str, r["input"]))
            print(f"{name:<9} {r['params']:>10,} params  batch {r['batch']} x {shape}  "
                  f"{r['samples_per_s']:7.1f} samples/s  {r['gflop_per_step']:6.2f} GFLOP/step  "
                  f"{r['gflop_per_s']:6.1f} GFLOP/s ({r['pct_of_peak']:4.1f} % of {args.peak:.0f})  "
                  f"{r['samples_per_cpu_s']:7.1f} samples/CPU-s  "
                  f"load {r['load_before']:.2f}->{r['load_after']:.2f}", flush=True)
    if args.json:
        print(json.dumps({"threads": args.threads, "peak_gflops": args.peak, "peak_how": how, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
