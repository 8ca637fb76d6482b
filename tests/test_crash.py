"""Crash safety (issue 12, item 3): a run killed with SIGKILL mid local training, mid
aggregation and mid checkpoint write resumes to metrics identical to an uninterrupted run."""
import os
import signal
import subprocess
import sys

import pytest

from psfl.runners.inprocess import resume_config, run_federated
from psfl.runners.store import read_records
from test_runner import strip_timing

# Runs `psfl run` after arranging for the process to SIGKILL itself at one point (the
# n-th call there): inside the local-training loop (after one batch), inside the server's
# aggregation (Eq. 10), or halfway through writing a checkpoint.
KILLER = r'''
import io, os, signal, sys
import torch
import psfl.methods.psfl as P
point, n = sys.argv[1], int(sys.argv[2])
calls = [0]
def die():
    os.kill(os.getpid(), signal.SIGKILL)
if point == "train":
    orig_train = P.local_train
    def local_train(trained, batches, *a, **k):
        calls[0] += 1
        def gen():
            for i, b in enumerate(batches):
                if calls[0] == n and i == 1:
                    die()
                yield b
        return orig_train(trained, gen(), *a, **k)
    P.local_train = local_train
elif point == "aggregate":
    orig_avg = P.aggregate_states
    def aggregate_states(*a, **k):
        calls[0] += 1
        if calls[0] == n:
            die()
        return orig_avg(*a, **k)
    P.aggregate_states = aggregate_states
elif point == "checkpoint":
    orig_save = torch.save
    def save(obj, f, *a, **k):
        if str(getattr(f, "name", "")).endswith("checkpoint.pt.tmp"):
            calls[0] += 1
            if calls[0] == n:
                buf = io.BytesIO()
                orig_save(obj, buf, *a, **k)
                f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                f.flush()
                die()
        return orig_save(obj, f, *a, **k)
    torch.save = save
from psfl.cli import main
sys.exit(main(sys.argv[3:]))
'''


@pytest.mark.parametrize("point,n", [("train", 3 + 2), ("aggregate", 2), ("checkpoint", 2)])
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path, reference_run, point, n):
    """3 clients, 3 rounds: killed in round 2 (during the second client's training; in the server's FedAvg;
    the checkpoint after round 2)."""
    over, full = reference_run(3)
    run_dir = tmp_path / "killed"
    cmd = [sys.executable, "-c", KILLER, point, str(n), "run", "--no-progress", "--out", str(run_dir)]
    for o in over:
        cmd += ["--set", o]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    done = len(read_records(run_dir / "metrics.jsonl"))
    assert 1 <= done <= 2
    resumed = run_federated(resume_config(run_dir), run_dir, resume=True, progress=False).records
    assert strip_timing(resumed) == strip_timing(full)
