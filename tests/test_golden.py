"""Golden-log regression: a small seeded PSFL run compared number by number with a
stored log (CompressAI style). Regenerate deliberately with
`PSFL_REGEN_GOLDEN=1 python -m pytest tests/test_golden.py` after an intended change."""
import json
import os
from pathlib import Path

import pytest

from psfl.config import load_config
from psfl.runners.inprocess import run_federated

from test_runner import tiny_overrides  # noqa: E402

GOLDEN = Path(__file__).parent / "golden" / "psfl_tiny.json"
EXACT = ("round", "zeta", "pruned_share", "downlink_bits", "upload_bits")


def _digest(records):
    out = []
    for r in records:
        d = {k: r[k] for k in EXACT}
        d["global"] = {k: r["global"][k] for k in ("accuracy", "loss", "psnr")}
        d["clients"] = [{k: c[k] for k in ("snr_db", "upload_bits", "mentor_acc", "student_acc", "mentor_total",
                                           "student_total")} for c in r["clients"]]
        out.append(d)
    return out


def test_seeded_run_matches_golden_log(tmp_path):
    cfg = load_config(None, tiny_overrides(tmp_path / "cache", rounds=2))
    got = _digest(run_federated(cfg, tmp_path / "run", progress=False).records)
    if os.environ.get("PSFL_REGEN_GOLDEN") or not GOLDEN.exists():
        GOLDEN.write_text(json.dumps(got, indent=1))
        pytest.skip("golden log (re)generated")
    want = json.loads(GOLDEN.read_text())
    for g, w in zip(got, want):
        for k in EXACT:
            assert g[k] == w[k], k
        for k, v in w["global"].items():
            assert g["global"][k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
        for gc, wc in zip(g["clients"], w["clients"]):
            assert gc["upload_bits"] == wc["upload_bits"]
            for k in wc:
                assert gc[k] == pytest.approx(wc[k], rel=1e-5, abs=1e-6), k
    assert len(got) == len(want)
