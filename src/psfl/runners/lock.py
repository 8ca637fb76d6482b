"""One writer per run folder: an advisory ``flock`` on ``<run>/.psfl.lock``.

The kernel drops the lock when its process dies (SIGKILL included), so a crashed run
never leaves a stale lock behind, and a second process that tries to write the same
folder gets :class:`RunLockedError` (exit 2 on the command line) instead of mixing its
metrics into the first one's. ``psfl reproduce`` workers use the same lock to share a
queue of runs. On systems without ``fcntl`` (Windows) runs are not locked.
"""
from __future__ import annotations

import os
import socket
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Iterator

from psfl.utils.errors import PsflError

LOCK = ".psfl.lock"

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


class RunLockedError(PsflError):
    """Another live process writes this run folder."""


@contextmanager
def run_lock(run_dir: str | Path) -> Iterator[Path]:
    """Hold the run folder's lock for the duration of the ``with`` block."""
    run_dir = Path(run_dir)
    path = run_dir / LOCK
    if fcntl is None:  # pragma: no cover
        yield path
        return
    while True:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunLockedError(f"run folder {run_dir} is being written by {holder} (lock {path}); "
                                 "wait for it to finish or stop it first") from None
        try:  # the holder we raced with may have removed the file after we opened it: retry
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"process {os.getpid()} on {socket.gethostname()}".encode())
        yield path
    finally:
        with suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)  # closing releases the flock
