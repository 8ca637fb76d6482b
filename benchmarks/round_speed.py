"""Old path against new path: wall time of whole cpu-scale rounds, alternating, in one run.

A *path* is a set of the engine's speed options; ``old`` switches every option of this
benchmark off, ``new`` leaves the engine as it is. Options measured:

  csc_channels_last   CSC models train in NHWC (``CSCModel.nhwc``) where oneDNN trains
                      them safely (``nhwc_trains_safely``: not the cpu CSC)

Each repeat runs one round (the in-process runner, its checkpoint and metrics included)
of the ``psfl reproduce`` cpu scale for the method and dataset once per path, the paths
in alternating order; the median per path and the ratio new / old are printed. Same
config, seed and data for both paths, so they train the same numbers (to float32 drift).

    python benchmarks/round_speed.py --method psfl --dataset fashion_mnist \\
        --data-dir ../shared/data [--threads 1] [--repeats 5] [--json OUT.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def set_path(new: bool) -> None:
    from psfl.models.csc import CSCModel

    CSCModel.nhwc = new


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", default="psfl")
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--evaluators", default=str(ROOT / "results" / "evaluators"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--set", nargs="*", default=[])
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    from psfl.experiments.reproduce import base_config, load_scale
    from psfl.methods import build_env
    from psfl.runners.inprocess import run_federated

    extra = [f'method="{a.method}"', "rounds=1", f"threads={a.threads}", f'evaluator.cache_dir="{a.evaluators}"',
             *a.set]
    if a.data_dir:
        extra.append(f'data.data_dir="{Path(a.data_dir).resolve()}"')
    cfg = base_config(load_scale("cpu"), a.dataset, extra)
    env = build_env(cfg, progress=False)
    times: dict[str, list[float]] = {"old": [], "new": []}
    accs: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(a.repeats + 1):  # the first repeat warms up and is not counted
            for path in (("old", "new") if rep % 2 == 0 else ("new", "old")):
                set_path(path == "new")
                env.models._pool.clear()  # models are rebuilt in the path's layout
                t = time.perf_counter()
                res = run_federated(cfg, Path(tmp) / f"{path}{rep}", progress=False, env=env)
                dt = time.perf_counter() - t
                if rep:
                    times[path].append(dt)
                accs[path] = res.records[-1]["global"]["accuracy"]
                if path == "new" and not any(m.memory_format == torch.channels_last for m in env.models._pool.values()):
                    raise SystemExit("round_speed: no model of this config trains NHWC (a CSC with a 1x1 strided "
                                     "convolution of < 16 inputs stays NCHW: psfl.utils.device.nhwc_trains_safely); "
                                     "nothing to compare")
    set_path(True)
    med = {p: statistics.median(v) for p, v in times.items()}
    from psfl.utils.device import device_info

    cpu = device_info("cpu")  # name, cpu_id (family / model), capability (SIMD kernels)
    print(f"# {a.method} on {a.dataset}, one cpu-scale round, {a.threads} thread(s), {a.repeats} repeats; "
          f"CPU: {cpu['name']} ({cpu.get('cpu_id', '?')})")
    print(f"old {med['old']:.2f} s, new {med['new']:.2f} s per round: new / old = {med['new'] / med['old']:.3f}; "
          f"global accuracy after the round: old {accs['old']:.4f}, new {accs['new']:.4f}")
    if a.json:
        Path(a.json).write_text(json.dumps({"method": a.method, "dataset": a.dataset, "threads": a.threads,
                                            "cpu": cpu, "times_s": times,
                                            "median_s": med, "ratio": med["new"] / med["old"],
                                            "accuracy": accs}, indent=2))


if __name__ == "__main__":
    main()
