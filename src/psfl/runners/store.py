"""What a run folder keeps on disk, written so that nothing is lost or half-read.

* ``metrics.jsonl``: one JSON line per finished round. A torn last line (the process was
  killed while appending it) is dropped with a message; a bad line anywhere else is an
  error naming it.
* ``checkpoint.pt`` (+ ``checkpoint.pt.sha256``): the state after the last finished round.
  A new checkpoint is written to a temporary file, flushed to disk and hashed; only then
  does the previous one become ``checkpoint.prev.pt`` and the new one take its place. A
  latest checkpoint that is missing, truncated or fails its checksum is reported and the
  previous one is used; a write that fails (disk full) leaves the previous checkpoints as
  they were and says so.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from psfl.utils.errors import PsflError
from psfl.utils.fileio import write_text_atomic

CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"
SUM = ".sha256"


def read_records(path: Path, quiet: bool = False) -> list[dict[str, Any]]:
    """The rounds in ``metrics.jsonl`` (a torn last line is dropped, with a message)."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict) or "round" not in rec:
                raise ValueError("not a round record")
        except ValueError as e:
            if i == len(lines) - 1:
                if not quiet:
                    print(f"psfl: {path}: ignoring a partial last line (a run stopped while writing it)",
                          file=sys.stderr)
                break
            raise PsflError(f"{path}: line {i + 1} is not a metrics record ({e}); the file is damaged") from None
        out.append(rec)
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_sum(path: Path, digest: str) -> None:
    write_text_atomic(path.with_name(path.name + SUM), digest + "\n")


def save_checkpoint(obj: Any, run_dir: Path) -> Path:
    """Write ``obj`` as the run's latest checkpoint, keeping the one before it."""
    run_dir = Path(run_dir)
    latest, prev = run_dir / CHECKPOINT, run_dir / PREVIOUS
    tmp = run_dir / (CHECKPOINT + ".tmp")
    try:
        with tmp.open("wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        digest = _sha256(tmp)
    except (OSError, RuntimeError) as e:  # disk full shows as OSError or torch's "enforce fail"
        tmp.unlink(missing_ok=True)
        raise PsflError(f"could not write the checkpoint in {run_dir} ({type(e).__name__}: {e}); the disk may be "
                        f"full. The previous checkpoint is intact: free space and resume with "
                        f"`psfl run --resume {run_dir}`") from None
    if latest.exists():
        os.replace(latest, prev)
        s = latest.with_name(CHECKPOINT + SUM)
        if s.exists():
            os.replace(s, prev.with_name(PREVIOUS + SUM))
        else:
            prev.with_name(PREVIOUS + SUM).unlink(missing_ok=True)
    os.replace(tmp, latest)
    _write_sum(latest, digest)
    return latest


def _read(path: Path, map_location: Any) -> tuple[Any | None, str]:
    if not path.is_file():
        return None, "missing"
    s = path.with_name(path.name + SUM)
    if s.is_file() and s.read_text().strip() != _sha256(path):
        return None, "its checksum does not match (damaged or truncated)"
    try:
        obj = torch.load(path, weights_only=False, map_location=map_location)
    except Exception as e:  # truncated zip, empty file, not a torch file
        return None, f"unreadable ({type(e).__name__}: {str(e)[:120]})"
    if not isinstance(obj, dict) or "round" not in obj or "server" not in obj:
        return None, "not a psfl run checkpoint"
    return obj, ""


def load_checkpoint(run_dir: Path, map_location: Any = "cpu") -> dict[str, Any]:
    """The latest readable checkpoint (falling back to the previous one, with a message)."""
    run_dir = Path(run_dir)
    obj, why = _read(run_dir / CHECKPOINT, map_location)
    if obj is not None:
        return obj
    prev, why_prev = _read(run_dir / PREVIOUS, map_location)
    if prev is None:
        raise PsflError(f"{run_dir}: no readable checkpoint ({CHECKPOINT}: {why}; {PREVIOUS}: {why_prev}); "
                        "the run cannot be resumed, start it again")
    print(f"psfl: {run_dir / CHECKPOINT}: {why}; resuming from {PREVIOUS} (after round {prev['round']})",
          file=sys.stderr)
    return prev


def has_checkpoint(run_dir: Path) -> bool:
    return (Path(run_dir) / CHECKPOINT).exists() or (Path(run_dir) / PREVIOUS).exists()
