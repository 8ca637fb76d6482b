"""Issue #3 benchmark: ratios measured in one run (this machine is noisy; no absolutes
are claimed). Prints:

1. PLD step time / (mentor step alone + student step alone) on the same batch
   (goal <= 1.10): the cost of distillation on top of training both models.
2. Share of round time spent outside model compute in the in-process runner
   (goal <= 3 %): orchestration, serialization bookkeeping, metrics, checkpoints.
3. Peak RSS of whole runs with K = 9, 50 and 100 clients (tiny presets).

    python benchmarks/pld_overhead.py [--steps 30] [--family cpu] [--skip-rss]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def _time(fn, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def pld_ratio(family: str, steps: int, batch: int, threads: int) -> dict:
    from psfl.evaluate import create_classifier
    from psfl.fl.pld import SemanticBridge, pld_losses, task_terms
    from psfl.models import create_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    mentor = create_model(f"{family}-M", img_size=28, in_chans=1)
    student = create_model(f"{family}-CSC", img_size=28, in_chans=1)
    clf = create_classifier("cnn", in_chans=1, num_classes=10, img_size=28).eval()
    for p in clf.parameters():
        p.requires_grad_(False)
    bridge = SemanticBridge(student.sem_dim, mentor.sem_dim)
    x, y = torch.rand(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    opt_m = torch.optim.SGD(list(mentor.parameters()) + list(bridge.parameters()), lr=0.01, momentum=0.9)
    opt_s = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)

    def alone(model, opt):
        def step():
            terms, _ = task_terms(model(x, 10.0, generator=g), x, y, clf)
            opt.zero_grad(set_to_none=True)
            terms["task"].backward()
            opt.step()
        return step

    def pld():
        L = pld_losses(mentor(x, 10.0, generator=g), student(x, 10.0, generator=g), x, y, clf, bridge)
        opt_m.zero_grad(set_to_none=True), opt_s.zero_grad(set_to_none=True)
        L.joint.backward()
        opt_m.step(), opt_s.step()

    m_step, s_step = alone(mentor, opt_m), alone(student, opt_s)
    for f in (m_step, s_step, pld):  # warm-up
        _time(f, 3)
    tm, ts, tp = [], [], []
    for _ in range(steps):  # interleaved so drifts in machine load hit all three alike
        tm += _time(m_step, 1)
        ts += _time(s_step, 1)
        tp += _time(pld, 1)
    med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
    return {"mentor_step_s": med(tm), "student_step_s": med(ts), "pld_step_s": med(tp),
            "ratio": med(tp) / (med(tm) + med(ts)), "batch": batch, "family": family}


def runner_overhead(family: str, rounds: int, threads: int) -> dict:
    """Wall time between the ends of consecutive rounds (so checkpoint writes, metrics and
    everything else the runner does are inside) vs the time spent inside method calls
    (broadcast, client updates, aggregation) and the global evaluation."""
    from psfl.config import load_config
    from psfl.runners.inprocess import run_federated

    cfg = load_config(None, [f"model.family='{family}'", f"rounds={rounds}", f"threads={threads}"])
    stamps: list[float] = []
    with tempfile.TemporaryDirectory() as d:
        recs = run_federated(cfg, Path(d), progress=False,
                             on_round=lambda r: stamps.append(time.perf_counter())).records
    wall = stamps[-1] - stamps[0]  # rounds 2..n, each ending with its checkpoint of the round before
    compute = sum(r["compute_s"] for r in recs[1:])
    return {"round_time_s": wall / (len(recs) - 1), "outside_compute_share": 1 - compute / wall,
            "rounds": rounds}


def peak_rss_mb(k: int, threads: int) -> float:
    code = (
        "import resource, tempfile, pathlib\n"
        "from psfl.config import load_config\n"
        "from psfl.runners.inprocess import run_federated\n"
        f"cfg = load_config(None, ['model.family=\"tiny\"', 'rounds=2', 'data.num_clients={k}',"
        f" 'data.min_client_size=10', 'train.local_steps=2', 'data.eval_samples=256', 'threads={threads}'])\n"
        "d = tempfile.mkdtemp()\n"
        "run_federated(cfg, pathlib.Path(d), progress=False)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="cpu")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--json", help="also write the results to this file")
    a = ap.parse_args()
    res = {"pld": pld_ratio(a.family, a.steps, a.batch, a.threads)}
    p = res["pld"]
    print(f"PLD step / (mentor step + student step) = {p['ratio']:.3f}  (goal <= 1.10; "
          f"{p['pld_step_s'] * 1e3:.1f} ms vs {p['mentor_step_s'] * 1e3:.1f} + {p['student_step_s'] * 1e3:.1f} ms, "
          f"{a.family} presets, batch {a.batch})")
    res["runner"] = runner_overhead(a.family, a.rounds, a.threads)
    print(f"runner time outside model compute = {100 * res['runner']['outside_compute_share']:.2f} % "
          f"of round time (goal <= 3 %; method calls + evaluation count as compute; {res['runner']['round_time_s']:.1f} s/round, default run, {a.rounds} rounds)")
    if not a.skip_rss:
        res["rss_mb"] = {k: peak_rss_mb(k, a.threads) for k in (9, 50, 100)}
        base = res["rss_mb"][9]
        print("peak RSS (tiny presets): " + ", ".join(
            f"K={k}: {v:.0f} MB ({v / base:.2f}x K=9)" for k, v in res["rss_mb"].items()))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
