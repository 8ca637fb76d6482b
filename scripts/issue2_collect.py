"""Collect the issue-2 measurements (results/issue2/) into CSV/JSON tables there.

Usage: python scripts/issue2_collect.py
"""
import csv
import json
from pathlib import Path

from psfl.evaluate import list_evaluators

here = Path(__file__).resolve().parents[1] / "results" / "issue2"
ev = [{"dataset": i.dataset, "source": i.source, "arch": i.arch, "input_preset": i.input_preset, "epochs": i.epochs,
       "clean_test_accuracy": round(i.test_accuracy, 4), "train_seconds": round(i.train_seconds, 1),
       "fingerprint": i.fingerprint} for i in list_evaluators()]
with open(here / "evaluators.csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(ev[0]))
    w.writeheader()
    w.writerows(ev)

rows, summary = [], {}
for model in ("cpu-M", "cpu-CSC"):
    r = json.loads((here / f"train_{model}" / "result.json").read_text())
    summary[model] = {"params": r["params"], "train_samples_per_s": round(r["train_samples_per_s"], 1),
                      "clean_accuracy": r["clean_accuracy"], "epochs": r["config"]["epochs"],
                      "train_snr_db": r["config"]["train_snr_db"], "table": r["table"]}
    for t in r["table"]:
        rows.append({"model": model, "test_snr_db": t["snr_db"], "accuracy": round(t["accuracy"], 4),
                     "psnr_db": round(t["psnr"], 2), "ssim": round(t["ssim"], 4), "mse": round(t["mse"], 5),
                     "train_samples_per_s": round(r["train_samples_per_s"], 1)})
with open(here / "central_fashion_mnist_awgn10.csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
(here / "central_fashion_mnist_awgn10.json").write_text(json.dumps(summary, indent=2) + "\n")
print(open(here / "evaluators.csv").read())
print(open(here / "central_fashion_mnist_awgn10.csv").read())
