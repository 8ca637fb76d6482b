"""Nothing lost, nothing mixed (issue 12, item 2): run-folder lock, --overwrite, checksummed
checkpoints with fallback, torn metrics lines, failed starts, disk full."""
import errno
import os
import subprocess
import sys
import time

import pytest
import torch

from psfl.cli import main
from psfl.config import load_config
from psfl.utils.errors import PsflError
from psfl.runners.inprocess import resume_config, run_federated
from psfl.runners.store import read_records
from test_runner import strip_timing, tiny_overrides


def run_args(out, over, *extra):
    args = ["run", "--no-progress", "--no-plots", "--out", str(out), *extra]  # the PNGs: 2-4 s a run
    for o in over:
        args += ["--set", o]
    return args


def test_existing_run_is_refused_unless_overwrite(tmp_path, cache, capsys):
    over = tiny_overrides(cache, rounds=2)
    assert main(run_args(tmp_path / "r", over)) == 0
    before = (tmp_path / "r" / "metrics.jsonl").read_text()
    capsys.readouterr()
    one = [o for o in over if not o.startswith("rounds=")] + ["rounds=1"]
    assert main(run_args(tmp_path / "r", one)) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (tmp_path / "r" / "metrics.jsonl").read_text() == before  # untouched
    assert main(run_args(tmp_path / "r", one, "--overwrite")) == 0
    assert len(read_records(tmp_path / "r" / "metrics.jsonl")) == 1


def test_second_writer_is_refused_while_the_first_runs(tmp_path, cache, capsys):
    out = tmp_path / "r"
    over = tiny_overrides(cache, rounds=4)
    cmd = [sys.executable, "-m", "psfl"] + run_args(out, over)
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        while not (out / ".psfl.lock").exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert (out / ".psfl.lock").exists(), proc.stderr.read().decode()[-2000:]
        other = [o for o in over if not o.startswith("seed")] + ["seed=7"]
        assert main(run_args(out, other)) == 2
        assert "being written by process" in capsys.readouterr().err
        assert main(["run", "--resume", str(out), "--no-progress"]) == 2  # a resume is a writer too
    finally:
        assert proc.wait(timeout=300) == 0
    recs = read_records(out / "metrics.jsonl")
    assert [r["round"] for r in recs] == [0, 1, 2, 3] and "seed = 0" in (out / "config.toml").read_text()


def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, reference_run, capsys):
    _, full = reference_run(3)
    run_dir = tmp_path / "r"
    reference_run(2, copy_to=run_dir)
    data = (run_dir / "checkpoint.pt").read_bytes()
    (run_dir / "checkpoint.pt").write_bytes(data[: len(data) // 2])  # torn by a crash or a bad disk
    capsys.readouterr()
    resumed = run_federated(resume_config(run_dir, ["rounds=3"]), run_dir, resume=True, progress=False).records
    assert "checksum does not match" in capsys.readouterr().err
    assert strip_timing(resumed) == strip_timing(full)  # round 2 redone from round 1's checkpoint


@pytest.mark.parametrize("damage", [b"", b"not a zip file at all"])
def test_no_readable_checkpoint_is_one_clear_error(tmp_path, reference_run, capsys, damage):
    run_dir = tmp_path / "r"
    reference_run(2, copy_to=run_dir)
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        (run_dir / name).write_bytes(damage)
        (run_dir / (name + ".sha256")).unlink()
    capsys.readouterr()
    assert main(["run", "--resume", str(run_dir), "--no-progress", "--set", "rounds=3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no readable checkpoint" in err[0] and "Traceback" not in err[0]


def test_torn_last_metrics_line_is_dropped_on_resume_and_in_report(tmp_path, reference_run, capsys):
    _, full = reference_run(2)
    run_dir = tmp_path / "r"
    reference_run(2, copy_to=run_dir)
    m = run_dir / "metrics.jsonl"
    lines = m.read_text().splitlines(keepends=True)
    m.write_text(lines[0] + lines[1][: len(lines[1]) // 2])  # killed while appending round 2
    torch_ckpt = torch.load(run_dir / "checkpoint.prev.pt", weights_only=False)
    assert torch_ckpt["round"] == 1
    (run_dir / "checkpoint.pt").unlink()  # and before its checkpoint was replaced
    (run_dir / "checkpoint.pt.sha256").unlink()
    capsys.readouterr()
    assert main(["report", str(run_dir)]) == 0
    assert "partial last line" in capsys.readouterr().err
    resumed = run_federated(resume_config(run_dir), run_dir, resume=True, progress=False).records
    assert strip_timing(resumed) == strip_timing(full)
    m.write_text("{broken\n" + "".join(lines))
    with pytest.raises(PsflError, match="line 1 is not a metrics record"):
        read_records(m)


def test_failed_start_leaves_no_folder(tmp_path, cache, capsys):
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"garbage")
    out = tmp_path / "new" / "r"
    over = [o for o in tiny_overrides(cache, rounds=1) if not o.startswith("evaluator.epochs")]
    assert main(run_args(out, over + [f'evaluator.checkpoint="{bad}"'])) == 2
    assert "garbage.pt" in capsys.readouterr().err and not out.exists()


def test_disk_full_keeps_the_previous_checkpoint_and_resumes(tmp_path, reference_run, monkeypatch):
    over, full = reference_run(3)
    run_dir = tmp_path / "r"
    real_save, calls = torch.save, []

    def full_disk(obj, f, *a, **k):
        if str(getattr(f, "name", "")).endswith("checkpoint.pt.tmp"):
            calls.append(1)
            if len(calls) == 2:  # the second round's checkpoint: no space left
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(PsflError, match="disk may be full.*previous checkpoint is intact"):
        run_federated(load_config(None, over), run_dir, progress=False)
    monkeypatch.setattr(torch, "save", real_save)
    assert not (run_dir / "checkpoint.pt.tmp").exists()
    resumed = run_federated(resume_config(run_dir), run_dir, resume=True, progress=False).records
    assert strip_timing(resumed) == strip_timing(full)
