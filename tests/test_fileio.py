"""psfl.utils.fileio: a failed write leaves the old file and no temporary behind."""
import pytest

from psfl.utils.fileio import atomic_path, write_text_atomic


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "cache.bin"
    write_text_atomic(path, "old")
    with pytest.raises(OSError, match="disk full"):
        with atomic_path(path) as tmp:
            tmp.write_text("half of the n")
            assert path.read_text() == "old"  # nothing visible before the rename
            raise OSError("disk full")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.bin"]


def test_successful_write_replaces_the_file(tmp_path):
    path = tmp_path / "run.json"
    write_text_atomic(path, "old")
    with atomic_path(path) as tmp:
        assert tmp.parent == path.parent and tmp != path  # same file system: os.replace is atomic
        tmp.write_bytes(b"new")
    assert path.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


def test_a_killed_writers_temporaries_are_removed_and_a_live_ones_kept(tmp_path):
    """A SIGKILLed process leaves NAME.<pid>.tmp behind; the next start removes it, but
    never the temporary of a process that still runs."""
    import os
    import signal
    import subprocess
    import sys

    from psfl.utils.fileio import remove_stale_temporaries

    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    p.send_signal(signal.SIGKILL)
    p.wait()
    dead = tmp_path / f"metrics.jsonl.{p.pid}.tmp"
    live = tmp_path / f"provenance.json.{os.getpid()}.tmp"
    other = tmp_path / "notes.tmp"
    for f in (dead, live, other):
        f.write_text("half")
    assert remove_stale_temporaries(tmp_path) == [dead]
    assert not dead.exists() and live.exists() and other.exists()
