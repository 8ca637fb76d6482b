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
