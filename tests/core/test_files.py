"""Files that are never half there: a failed write keeps the old file or folder and leaves no temporary behind."""

from __future__ import annotations

import hashlib
import stat

import pytest

from hbir.core.files import UMASK, file_sha256, replace_dir, write_file, write_text


def test_write_file_replaces_the_file_and_leaves_nothing_else(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    write_text(path, "old")
    write_text(path, "new")
    assert path.read_text() == "new" and sorted(p.name for p in path.parent.iterdir()) == ["a.txt"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~UMASK  # an ordinary file, not mkstemp's private one


def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    path = write_text(tmp_path / "a.txt", "old")

    def fail(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_file(path, fail)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_replace_dir_swaps_in_a_complete_folder_and_keeps_the_old_one_on_failure(tmp_path):
    out = tmp_path / "model"
    replace_dir(out, lambda work: (work / "weights").write_text("v1"))
    replace_dir(out, lambda work: (work / "weights").write_text("v2"))
    assert (out / "weights").read_text() == "v2"

    def fail(work):
        (work / "weights").write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        replace_dir(out, fail)
    assert (out / "weights").read_text() == "v2" and [p.name for p in tmp_path.iterdir()] == ["model"]


def test_file_sha256_is_the_sha256_of_the_bytes(tmp_path):
    data = bytes(range(256)) * 10_000  # 2.5 MB: more than one read chunk
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
