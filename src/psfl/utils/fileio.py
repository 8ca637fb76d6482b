"""Atomic file writes: a reader (another run, a resumed run, a ``reproduce --jobs``
worker, a test worker) sees the old file or the new one, never half of one."""
from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; when the block ends without an error
    it is renamed over ``path`` (``os.replace``: atomic on one file system), otherwise it
    is removed and ``path`` is left as it was. The name carries the process id, so two
    processes writing the same file at once do not write into each other's."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (:func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Remove the temporaries :func:`atomic_path` left in ``folder`` when its process was
    killed mid-write (``NAME.<pid>.tmp`` whose process no longer runs); returns them.
    A temporary of a running process (or of a reused pid) is left alone."""
    gone = []
    for tmp in Path(folder).glob("*.tmp"):
        m = re.fullmatch(r".+\.(\d+)\.tmp", tmp.name)
        if not m:
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
            gone.append(tmp)
        except (PermissionError, OverflowError):  # alive under another user, or not a pid
            continue
    return gone
