"""pyganx_runtime.files: atomic writes leave the target as it was on any failure, and a
failure of the disk names the file."""
from __future__ import annotations

import errno

import pytest

from pyganx_runtime.files import atomic_write_bytes, atomic_write_text


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path):
    target = tmp_path / "losses.csv"
    atomic_write_text(target, "old\n")

    def write(f):
        f.write(b"new, partly")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as info:
        atomic_write_bytes(target, write)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert str(target) in str(info.value) and "No space left on device" in str(info.value)
    assert target.read_text() == "old\n" and _listing(tmp_path) == ["losses.csv"]


def test_other_errors_pass_unchanged_and_leave_nothing_behind(tmp_path):
    target = tmp_path / "a.png"

    def write(f):
        raise ValueError("bad image")

    with pytest.raises(ValueError, match="^bad image$"):
        atomic_write_bytes(target, write)
    assert _listing(tmp_path) == []
