"""Issue 12, item 6: the accuracy / epsilon trade-off of client-level differential
privacy (``[privacy]``, DP-FedAvg) for small PSFL: `make run`'s config (cpu presets, 9
clients, 10 rounds x 10 local steps, the bundled Fashion-MNIST sample) on one thread.

Same config, seed, partition and SNR trace for every row; only the noise multiplier
sigma changes (plus one row without clipping and one with clipping alone). Each run is
an ordinary ``run_federated`` into ``OUT/runs/<name>/`` (metrics.jsonl, config.toml,
provenance.json); the table reports the epsilon at delta after the last round (Opacus'
RDP accountant, as the runs log it), the global student's accuracy (independent scorer)
and PSNR averaged over the last 3 rounds, and the mentors' local accuracy (the mentors
never leave the clients, so DP noise reaches them only through distillation).

    python experiments/privacy/tradeoff.py --out results/privacy [--rounds 10] [--clip 10] [--sigmas 0.01,0.03]
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

BASE = ["threads=1"]  # otherwise psfl's defaults, as `make run`


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--clip", type=float, default=10.0,
                    help="L2 clip of the update (default 10: about the median norm of the clients' round-0 "
                         "updates under this config, 10.8-11.4, as DP-FedAvg suggests)")
    ap.add_argument("--delta", type=float, default=1e-5)
    ap.add_argument("--sigmas", default="0.01,0.03,0.1,0.3")
    ap.add_argument("--data-dir", help="folder with fashion_mnist.npz (default: the bundled sample)")
    args = ap.parse_args()

    from psfl.config import load_config
    from psfl.utils.errors import DivergenceError
    from psfl.methods import check_run_config
    from psfl.runners.inprocess import run_federated
    from psfl.runners.store import read_records

    out = Path(args.out)
    rows = [("no-dp", [])] + [("clip-only", [f"privacy.clip={args.clip}"])] + [
        (f"sigma-{s}", [f"privacy.clip={args.clip}", f"privacy.noise_multiplier={s}", f"privacy.delta={args.delta}"])
        for s in args.sigmas.split(",")]
    data = [f'data.data_dir="{Path(args.data_dir).resolve()}"'] if args.data_dir else []
    table = []
    for name, extra in rows:
        run_dir = out / "runs" / name
        over = BASE + [f"rounds={args.rounds}"] + data + extra
        cfg = check_run_config(load_config(None, over))
        recs = read_records(run_dir / "metrics.jsonl", quiet=True) if (run_dir / "metrics.jsonl").is_file() else []
        diverged = ""
        if len(recs) < args.rounds:
            print(f"{name}: running", flush=True)
            try:
                recs = run_federated(cfg, run_dir, resume=bool(recs), progress=False,
                                     command=[sys.executable, *sys.argv]).records
            except DivergenceError as e:  # the noise blew the model up: say so, keep its finished rounds
                print(f"{name}: {e}", flush=True)
                recs = read_records(run_dir / "metrics.jsonl", quiet=True)
                diverged = f"diverged in round {len(recs) + 1}"
        last = recs[-3:]
        eps = recs[-1].get("dp_epsilon", math.inf)
        table.append({"run": name, "sigma": cfg.privacy.noise_multiplier, "clip": cfg.privacy.clip,
                      "epsilon": eps, "delta": args.delta if cfg.privacy.noise_multiplier > 0 else "",
                      "global_acc_last3": sum(r["global"]["accuracy"] for r in last) / len(last),
                      "psnr_last3": sum(r["global"]["psnr"] for r in last) / len(last),
                      "mentor_local_acc_last3": sum(r["psfl_accuracy"] for r in last) / len(last),
                      "acc_round1": recs[0]["global"]["accuracy"], "rounds": len(recs), "note": diverged})
        print(json.dumps(table[-1]), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "tradeoff.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(table[0]))
        w.writeheader()
        w.writerows(table)
    lines = ["| run | sigma | clip | epsilon (delta) | global acc (last 3) | PSNR dB (last 3) | mentors' local acc (last 3) | rounds |",
             "|---|---|---|---|---|---|---|---|"]
    for t in table:
        eps = "inf" if not math.isfinite(t["epsilon"]) else f"{t['epsilon']:.3g} ({t['delta']:g})"
        lines.append(f"| {t['run']} | {t['sigma']:g} | {t['clip']:g} | {eps} | {t['global_acc_last3']:.3f} | "
                     f"{t['psnr_last3']:.2f} | {t['mentor_local_acc_last3']:.3f} | {t['rounds']} {t['note']} |")
    (out / "tradeoff.md").write_text("\n".join(lines) + "\n")
    (out / "command.txt").write_text(" ".join([Path(sys.executable).name, *sys.argv]) + "\n")
    _plot(table, out / "tradeoff.png")
    print("\n".join(lines))
    return 0


def _plot(table: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dp = [t for t in table if math.isfinite(t["epsilon"])]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([t["epsilon"] for t in dp], [t["global_acc_last3"] for t in dp], "o-", label="global student (DP)")
    for t in table:
        if not math.isfinite(t["epsilon"]):
            ax.axhline(t["global_acc_last3"], ls="--" if t["run"] == "no-dp" else ":", color="gray",
                       label=f"{t['run']} (epsilon = inf)")
    ax.set_xscale("log")
    ax.set_xlabel("epsilon after the last round (delta = 1e-5)")
    ax.set_ylabel("global accuracy (last 3 rounds)")
    ax.set_title("PSFL (make run config): client-level DP")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
