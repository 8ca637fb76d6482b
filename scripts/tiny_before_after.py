"""Tiny compare on the bundled sample: per-method per-round global metrics (JSON), to
check that a refactor leaves every method's numbers unchanged (same machine, bit-exact).

    python scripts/tiny_before_after.py OUT_DIR     # writes OUT_DIR/result.json
"""
import json
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_runner import tiny_overrides
from test_golden import PINNED
from psfl.config import load_config
from psfl.experiments.compare import compare
out = Path(sys.argv[1])
methods = ["psfl", "psfl-no-pld", "psfl-no-agp", "fedavg", "fedavg-csc", "stc", "fttq", "fedpaq"]
over = tiny_overrides(out / "cache", rounds=3) + ["train.local_steps=10", "data.eval_samples=256", *PINNED]
rows, _ = compare(load_config(None, over), methods, out / "cmp", progress=False)
res = {}
for m in methods:
    recs = [json.loads(l) for l in (out / "cmp" / m / "metrics.jsonl").read_text().splitlines()]
    res[m] = [{"acc": r["global"]["accuracy"], "loss": r["global"]["loss"], "psnr": r["global"]["psnr"],
               "local": r["mean_local_acc"], "bits": r["upload_bits"]} for r in recs]
(out / "result.json").write_text(json.dumps(res, indent=1))
for m, v in res.items():
    print(m, " ".join(f"{x['acc']:.4f}/{x['loss']:.4f}/{x['psnr']:.2f}" for x in v))
