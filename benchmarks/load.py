"""Load: tiny-preset in-process PSFL with K = 100 and K = 500 clients (issue 12, item 8).

Each K runs in its own process (`psfl run`, bundled Fashion-MNIST sample, Dirichlet
r = 0.9 without Table I volumes, 2 rounds x 2 local steps, one thread). Prints per K: the
peak resident memory of that process, the time per round, and one client's state size
(its mentor, bridge and optimiser state as saved in the checkpoint); then the RSS growth
per extra client between the two K against that state size.

    python benchmarks/load.py [--ks 100,500] [--out results/load.json]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import write_report


def run_one(k: int, tmp: Path) -> dict:
    out = tmp / f"k{k}"
    over = ["rounds=2", f"data.num_clients={k}", 'data.sizes="none"', "data.min_client_size=8",
            'model.family="tiny"', "train.local_steps=2", "train.batch_size=8", "data.eval_samples=64",
            "data.local_eval_samples=8", "evaluator.epochs=1", "evaluator.score_epochs=1", "threads=1",
            f'evaluator.cache_dir="{tmp / "cache"}"']
    cmd = [sys.executable, "-c",
           "import resource, sys; from psfl.cli import main; rc = main(sys.argv[1:]); "
           "print('PEAK_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(rc)",
           "run", "--no-progress", "--out", str(out)]
    for o in over:
        cmd += ["--set", o]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"K={k} failed:\n{proc.stderr[-3000:]}")
    peak = int(next(l for l in proc.stderr.splitlines() if l.startswith("PEAK_KIB")).split()[1])
    recs = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if l.strip()]
    import torch

    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    buf = io.BytesIO()
    torch.save(ckpt["clients"][0], buf)
    return {"K": k, "peak_rss_mib": round(peak / 1024, 1), "round_s": [round(r["time_s"], 1) for r in recs],
            "client_state_kib": round(len(buf.getvalue()) / 1024, 1),
            "checkpoint_mib": round((out / "checkpoint.pt").stat().st_size / 2**20, 1),
            "global_accuracy": recs[-1]["global"]["accuracy"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ks", default="100,500")
    ap.add_argument("--out")
    args = ap.parse_args()
    ks = [int(k) for k in args.ks.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run_one(k, Path(tmp)) for k in ks]
    report = {"runs": rows}
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        per = (b["peak_rss_mib"] - a["peak_rss_mib"]) * 1024 / (b["K"] - a["K"])
        report["rss_growth_per_client_kib"] = round(per, 1)
        report["growth_vs_state"] = round(per / b["client_state_kib"], 2)
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
