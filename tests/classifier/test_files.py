from __future__ import annotations

import pytest

from classifier.files import atomic_write


def test_it_replaces_a_file_whole(tmp_path):
    target = tmp_path / "state.json"
    target.write_bytes(b"old")

    atomic_write(target, b"new", mode=0o644)

    assert target.read_bytes() == b"new"
    assert target.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_write_that_fills_the_disk_keeps_the_old_file_and_leaves_no_partial_one(
    tmp_path, full_disk
):
    target = tmp_path / "state.json"
    target.write_bytes(b"old")

    with full_disk(1 << 16), pytest.raises(OSError):
        atomic_write(target, bytes(1 << 20))

    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
