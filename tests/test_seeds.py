"""`psfl seeds`: per-run last-k means and the mean +- sd over seeds, against hand values."""
import json
import math

import pytest

from psfl.cli import main
from psfl.experiments.seeds import read_runs, run_summary, seed_rows


def _records(accs, energy=1.0, bits=(10, 30)):
    return [{"round": i, "global": {"accuracy": a, "psnr": 10.0 + a}, "energy_j": energy * (i + 1),
             "mean_local_acc": a / 2,
             "clients": [{"upload_bits": b} for b in bits]} for i, a in enumerate(accs)]


def _write(root, name, seed, recs):
    d = root / name / f"seed{seed}"
    d.mkdir(parents=True)
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))


def test_run_summary_by_hand():
    s = run_summary(_records([0.1, 0.2, 0.3, 0.5, 0.7, 0.9]), last=2)
    assert s["acc"] == pytest.approx(0.8) and s["psnr"] == pytest.approx(10.8) and s["local_acc"] == pytest.approx(0.4)
    assert s["trend"] == pytest.approx(0.8 - 0.4)  # (0.7 + 0.9)/2 - (0.3 + 0.5)/2
    assert s["energy_j"] == pytest.approx(3.5) and s["upload_bits"] == pytest.approx(20)
    assert s["first_acc"] == pytest.approx(0.1)


def test_seed_rows_mean_sd_and_unfinished(tmp_path):
    _write(tmp_path, "a", 0, _records([0.0, 0.0, 0.4, 0.6]))
    _write(tmp_path, "a", 1, _records([0.0, 0.0, 0.2, 0.2]))
    _write(tmp_path, "a", 2, _records([0.0, 0.9]))  # unfinished: never averaged
    _write(tmp_path, "b", 0, _records([0.0, 0.0, 0.3, 0.3]))
    runs = read_runs(tmp_path)
    a, b = seed_rows(runs, rounds=4, last=2)
    assert (a["seeds"], a["unfinished"]) == ("0,1", "2(2/4)")
    assert a["acc"] == pytest.approx(0.35)  # mean of 0.5 and 0.2
    assert a["acc_sd"] == pytest.approx(math.sqrt(2 * 0.15 ** 2))  # sample sd of {0.5, 0.2}
    assert b["acc"] == pytest.approx(0.3) and math.isnan(b["acc_sd"])
    out = tmp_path / "out"
    assert main(["seeds", str(tmp_path), "--rounds", "4", "--last", "2", "--out", str(out), "--names", "b,x=a"]) == 0
    table = (out / "table.md").read_text().splitlines()
    assert table[2].startswith("| b | 0 | 0.300 |") and table[3].startswith("| x | 0,1 (running: 2(2/4)) | 0.350 ± 0.212 |")
    assert (out / "accuracy.png").stat().st_size > 0


def test_seeds_refuses_an_empty_root(tmp_path):
    assert main(["seeds", str(tmp_path), "--rounds", "4", "--out", str(tmp_path / "o")]) == 2
