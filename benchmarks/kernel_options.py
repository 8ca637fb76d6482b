"""Kernel options for one local training step, per preset, measured against each other.

One step as the local-training loop runs it: forward through the channel (AWGN, 10 dB),
pixel MSE, backward, gradient clipping to 1.0, SGD with momentum 0.9. Options:

  foreach        multi-tensor optimiser step and clipping (``foreach=True``) instead of
                 PyTorch's per-tensor loop (its CPU default)
  channels_last  model and input in NHWC memory format (convolutional presets only)
  compile        ``torch.compile`` (inductor CPU) of the model's forward (``--compile``;
                 compile time is printed separately and not in the step time)

Variants run alternating, ``--repeats`` rounds of ``--steps`` steps each, and the median
step time is compared with the baseline (all options off) measured in the same run.

    python benchmarks/kernel_options.py [--presets cpu-M cpu-CSC] [--batch 32] [--threads 1]
        [--repeats 5] [--steps 10] [--img 28 --chans 1] [--compile] [--json OUT.json]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from common import alternate, cpu_line


def make(preset: str, img: int, chans: int, batch: int, foreach: bool, cl: bool, compiled: bool):
    from psfl.models import create_model

    torch.manual_seed(0)
    m = create_model(preset, img_size=img, in_chans=chans)
    x = torch.rand(batch, chans, img, img)
    if cl:
        m = m.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, foreach=foreach)
    g = torch.Generator().manual_seed(0)
    fwd = torch.compile(m) if compiled else m

    def step() -> None:
        out = fwd(x, 10.0, generator=g)
        loss = (out.x_hat - x).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0, foreach=foreach)
        opt.step()
    t = time.perf_counter()
    step()  # warm-up (and compilation)
    return step, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["cpu-M", "cpu-L", "cpu-H", "cpu-CSC"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--img", type=int, default=28)
    ap.add_argument("--chans", type=int, default=1)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"# {cpu_line(a.threads)}; ATEN_CPU_CAPABILITY={os.environ.get('ATEN_CPU_CAPABILITY', '(default)')}; "
          f"batch {a.batch} x {a.chans}x{a.img}x{a.img}")
    print("| preset | variant | median step ms | vs baseline |")
    print("|---|---|---:|---:|")
    rows = []
    for p in a.presets:
        from psfl.models import MODELS

        conv = MODELS.get(p).family == "csc"
        variants = {"baseline": (False, False, False), "foreach": (True, False, False)}
        if conv:
            variants["channels_last"] = (False, True, False)
            variants["foreach + channels_last"] = (True, True, False)
        if a.compile:
            variants["compile + foreach"] = (True, False, True)
        steps, compile_s = {}, {}
        for name, opts in variants.items():
            steps[name], compile_s[name] = make(p, a.img, a.chans, a.batch, *opts)
        meds = alternate(steps, a.repeats, a.steps)
        base = meds["baseline"]
        for n in variants:
            med = meds[n]
            extra = f" (first step incl. compile {compile_s[n]:.0f} s)" if "compile" in n else ""
            print(f"| {p} | {n} | {med * 1e3:.1f} | {med / base:.2f}{extra} |")
            rows.append({"preset": p, "variant": n, "median_step_s": med, "ratio": med / base,
                         "first_step_s": compile_s[n]})
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
