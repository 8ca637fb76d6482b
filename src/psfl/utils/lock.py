"""One writer per run folder: an advisory ``flock`` on ``<run>/.psfl.lock``.

The kernel drops the lock when its process dies (SIGKILL included), so a crashed run
never leaves a stale lock behind, and a second process that tries to write the same
folder gets :class:`RunLockedError` (exit 2 on the command line) instead of mixing its
metrics into the first one's. ``psfl reproduce`` workers use the same lock to share a
queue of runs. :func:`wait_lock` is the waiting kind: where several processes need the
same thing made once (an evaluator the cache lacks), one makes it and the others wait,
then find it made. On systems without ``fcntl`` (Windows) nothing is locked.
"""
from __future__ import annotations

import os
import socket
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Callable, ContextManager, Iterator

from psfl.utils.errors import PsflError

LOCK = ".psfl.lock"

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


class RunLockedError(PsflError):
    """Another live process writes this run folder."""


class _Busy(Exception):
    """The lock is held; ``holder`` says by whom (what it wrote into the file)."""

    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder


def _acquire(path: Path, blocking: bool) -> int:
    """An open fd holding ``path``'s flock; raises :class:`_Busy` if it is held and not
    ``blocking``."""
    while True:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise _Busy(holder) from None
        try:  # the holder we raced with may have removed the file after we opened it: retry
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


@contextmanager
def _locked(path: Path, on_busy: Callable[[str], None]) -> Iterator[Path]:
    """Hold ``path``'s flock for the ``with`` block. If another process holds it,
    ``on_busy(holder)`` either raises or returns, and then the lock is waited for."""
    if fcntl is None:  # pragma: no cover
        yield path
        return
    try:
        fd = _acquire(path, blocking=False)
    except _Busy as e:
        on_busy(e.holder)
        fd = _acquire(path, blocking=True)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"process {os.getpid()} on {socket.gethostname()}".encode())
        yield path
    finally:
        with suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)  # closing releases the flock


def run_lock(run_dir: str | Path) -> ContextManager[Path]:
    """Hold the run folder's lock for the duration of the ``with`` block; raises
    :class:`RunLockedError` if another process holds it."""
    path = Path(run_dir) / LOCK

    def refuse(holder: str) -> None:
        raise RunLockedError(f"run folder {run_dir} is being written by {holder} (lock {path}); "
                             "wait for it to finish or stop it first")

    return _locked(path, refuse)


def wait_lock(path: str | Path, waiting: str = "") -> ContextManager[Path]:
    """Hold the lock file ``path``, waiting while another process holds it (printing
    ``waiting`` once to stderr if it has to): one process does the work, the others
    then find it done."""
    import sys

    def wait(holder: str) -> None:
        if waiting:
            print(f"{waiting} ({holder} holds {path})", file=sys.stderr)

    return _locked(Path(path), wait)
