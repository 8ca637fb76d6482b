"""Atomic file writes: a reader (another run, a resumed run, a ``reproduce --jobs``
worker, a test worker) sees the old file or the new one, never half of one."""
from __future__ import annotations

import os
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
