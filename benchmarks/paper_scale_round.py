"""One round of PSFL with the paper's Table I models at 224 x 224 x 3, on CPU: wall time
and peak memory (issue 10: paper scale proven runnable).

The config is `psfl reproduce --scale paper` (experiments/reproduce/scale-paper.toml) on a
small subset: the bundled Fashion-MNIST sample (5,700 train / 1,000 test images, resized
to 224 px and replicated to RGB), ``--clients`` MUs whose mentors cycle through GSC-M, L, H
(Table I's rule needs 9 MUs), ``--steps`` local steps of ``--batch`` images, a few
evaluation images, one round. Everything else (models, channel, AGP, PLD, energy) is the
paper scale's. Prints JSON (and writes it with --out): seconds for the round and for the
whole run including evaluator training, peak resident memory, parameter counts.

    python benchmarks/paper_scale_round.py --out results/paper-scale/round.json
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from pathlib import Path

from common import write_report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=3)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--optimizer", default="", help="override the paper scale's optimizer (e.g. sgd: less memory)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out")
    args = ap.parse_args()

    import torch

    from psfl.experiments.reproduce import base_config, load_scale
    from psfl.runners.inprocess import run_federated

    tiers = ["M", "L", "H"]
    mentors = [tiers[i % 3] for i in range(args.clients)]
    with tempfile.TemporaryDirectory() as tmp:
        extra = ["rounds=1", f"threads={args.threads}", f"data.num_clients={args.clients}", 'data.sizes="none"',
                 f"model.mentors={json.dumps(mentors)}", "train.local_epochs=0", f"train.local_steps={args.steps}",
                 f"train.batch_size={args.batch}", "data.eval_samples=8", "data.local_eval_samples=4",
                 "evaluator.epochs=1", "evaluator.score_epochs=1", f'evaluator.cache_dir="{tmp}/cache"']
        if args.optimizer:
            extra.append(f'train.optimizer="{args.optimizer}"')
        cfg = base_config(load_scale("paper"), "fashion_mnist", extra)
        t0 = time.perf_counter()
        res = run_federated(cfg, Path(tmp) / "run", progress=False, device=args.device)
        total = time.perf_counter() - t0
    rec = res.records[0]
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    out = {
        "what": "one PSFL round, paper presets at 224x224x3, bundled Fashion-MNIST sample",
        "clients": args.clients, "mentors": mentors, "local_steps": args.steps, "batch_size": args.batch,
        "optimizer": cfg.train.optimizer, "threads": args.threads, "device": args.device,
        "round_s": round(rec["time_s"], 1), "client_compute_s": round(rec["compute_s"], 1),
        "total_s_incl_data_and_evaluators": round(total, 1), "peak_rss_gib": round(peak_kb / 2**20, 2),
        "upload_bits_per_client": [c["upload_bits"] for c in rec["clients"]],
        "energy_j": rec["energy_j"], "global_accuracy": rec["global"]["accuracy"],
        "torch": torch.__version__, "machine": platform.processor() or
        platform.machine(), "cpus": torch.get_num_threads(),
    }
    write_report(out, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
