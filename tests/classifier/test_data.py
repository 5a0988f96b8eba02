from __future__ import annotations

import shutil
from collections import Counter

import pytest

from classifier.data import scan_dataset, split_dataset
from classifier.errors import DatasetError


def test_it_scans_classes_items_and_fingerprint(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "ds", classes={"cat": 3, "dog": 4})
    (root / "dog" / "notes.txt").write_text("not a photo")

    scan = scan_dataset(root)

    assert scan.class_names == ["cat", "dog"]
    assert scan.counts() == {"cat": 3, "dog": 4}
    assert all(label == (0 if path.startswith("cat/") else 1) for path, label in scan.items)
    assert scan.rejected == []
    assert scan.total_bytes == sum(p.stat().st_size for p in root.rglob("*.*g"))
    assert len(scan.fingerprint) == 64


def test_it_changes_the_fingerprint_only_when_content_changes(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "ds")
    first = scan_dataset(root).fingerprint
    assert scan_dataset(root).fingerprint == first

    target = root / "a" / "a_000.jpg"
    target.write_bytes((root / "a" / "a_002.jpg").read_bytes())
    assert scan_dataset(root).fingerprint != first


def test_it_reports_corrupt_files_and_keeps_going(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "ds")
    (root / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "b" / "empty.png").write_bytes(b"")
    good = (root / "b" / "b_000.jpg").read_bytes()
    (root / "b" / "truncated.jpg").write_bytes(good[: len(good) // 2])

    scan = scan_dataset(root)

    rejected = dict(scan.rejected)
    assert set(rejected) == {"a/broken.jpg", "b/empty.png", "b/truncated.jpg"}
    assert all(reason for reason in rejected.values())
    assert scan.counts() == {"a": 6, "b": 6}


def test_it_skips_checks_when_asked_and_drops_files_later(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "ds")
    (root / "a" / "broken.jpg").write_bytes(b"junk")

    scan = scan_dataset(root, check_images=False)
    assert scan.counts() == {"a": 7, "b": 6}

    trimmed = scan.without([("a/broken.jpg", "damaged")])
    assert trimmed.counts() == {"a": 6, "b": 6}
    assert trimmed.rejected == [("a/broken.jpg", "damaged")]
    assert trimmed.fingerprint == scan_dataset(root).fingerprint


def test_it_refuses_a_missing_folder(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        scan_dataset(tmp_path / "nope")


def test_it_refuses_fewer_than_two_classes(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "ds", classes={"only": 4})
    with pytest.raises(DatasetError, match="at least 2 class folders"):
        scan_dataset(root)


def test_it_accepts_a_single_class_folder_when_asked_to(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "ds", classes={"only": 3})

    scan = scan_dataset(root, min_classes=1)

    assert scan.class_names == ["only"]
    assert scan.counts() == {"only": 3}


def test_it_refuses_a_class_with_too_few_readable_images(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "ds", classes={"a": 5, "b": 2})
    (root / "b" / "bad.jpg").write_bytes(b"junk")
    with pytest.raises(DatasetError, match=r"at least 3 readable images.*b \(2\)"):
        scan_dataset(root, min_images_per_class=3)


def test_it_splits_deterministically(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "ds", classes={"a": 20, "b": 20})
    scan = scan_dataset(root, check_images=False)

    first = split_dataset(scan, 0.25, seed=7)
    assert split_dataset(scan_dataset(root, check_images=False), 0.25, seed=7) == first
    assert split_dataset(scan, 0.25, seed=8) != first
    train, val = first
    assert sorted(train + val) == scan.items
    assert not set(train) & set(val)


def test_it_stratifies_every_class(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "ds", classes={"a": 200, "b": 200, "c": 2}, size=(8, 8))
    scan = scan_dataset(root, check_images=False)

    train, val = split_dataset(scan, 0.2, seed=1)

    val_counts = Counter(label for _, label in val)
    assert set(val_counts) == {0, 1, 2}
    for label in (0, 1):
        assert 25 <= val_counts[label] <= 55  # 20 % of 200 = 40, give or take the hashes
    assert Counter(label for _, label in train)[2] == 1


def test_it_keeps_existing_files_on_their_side_when_files_are_added(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "ds", classes={"a": 30, "b": 30}, size=(8, 8))
    before_train, before_val = split_dataset(scan_dataset(root, check_images=False))

    extra = make_image_folder(tmp_path / "extra", classes={"a": 15, "b": 15}, size=(8, 8), seed=3)
    for path in extra.rglob("*.*g"):
        shutil.copy(path, root / path.parent.name / f"new_{path.name}")
    after_train, after_val = split_dataset(scan_dataset(root, check_images=False))

    assert set(before_train) <= set(after_train)
    assert set(before_val) <= set(after_val)
    assert len(after_train) + len(after_val) == 90


def _age(root, seconds: float = 60.0) -> None:
    """Backdate every file, as if the photos had been on disk for a while."""
    for path in root.rglob("*"):
        if path.is_file():
            _age_file(path, seconds)


def _age_file(path, seconds: float = 30.0) -> None:
    import os
    import time

    past = time.time() - seconds
    os.utime(path, (past, past))


def _count_reads(monkeypatch) -> list[str]:
    from classifier import data

    reads: list[str] = []
    real = data._inspect

    def counting(root, relpath, check_image):
        reads.append(relpath)
        return real(root, relpath, check_image)

    monkeypatch.setattr(data, "_inspect", counting)
    return reads


def test_a_hash_cache_rereads_only_new_or_changed_files(tmp_path, make_image_folder, monkeypatch):
    from classifier.data import hash_cache_path

    root = make_image_folder(tmp_path / "ds", classes={"a": 4, "b": 4})
    (root / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    _age(root)
    cache = hash_cache_path(tmp_path / "cache", root)
    first = scan_dataset(root, hash_cache=cache)
    reads = _count_reads(monkeypatch)

    again = scan_dataset(root, hash_cache=cache)
    assert reads == []  # nothing read: size, mtime and inode all unchanged
    assert (again.fingerprint, again.files, again.rejected) == (
        first.fingerprint,
        first.files,
        first.rejected,
    )

    (root / "b" / "b_001.png").write_bytes((root / "a" / "a_000.jpg").read_bytes())
    (root / "b" / "new.jpg").write_bytes((root / "b" / "b_000.jpg").read_bytes())
    for name in ("b_001.png", "new.jpg"):
        _age_file(root / "b" / name)
    changed = scan_dataset(root, hash_cache=cache)
    assert sorted(reads) == ["b/b_001.png", "b/new.jpg"]
    uncached = scan_dataset(root)
    assert (changed.fingerprint, changed.files) == (uncached.fingerprint, uncached.files)


def test_a_hash_cache_does_not_trust_a_file_modified_just_before_it_was_written(
    tmp_path, make_image_folder, monkeypatch
):
    root = make_image_folder(tmp_path / "ds", classes={"a": 2, "b": 2})
    cache = tmp_path / "scan.json"
    scan_dataset(root, hash_cache=cache)  # the photos were written an instant ago
    reads = _count_reads(monkeypatch)

    scan_dataset(root, hash_cache=cache)

    assert len(reads) == 4  # same clock tick as the cache: an edit could hide, so re-read


def test_a_hash_cache_from_a_quick_scan_does_not_stand_in_for_an_image_check(
    tmp_path, make_image_folder, monkeypatch
):
    root = make_image_folder(tmp_path / "ds", classes={"a": 2, "b": 2})
    _age(root)
    cache = tmp_path / "scan.json"
    scan_dataset(root, hash_cache=cache, check_images=False)
    reads = _count_reads(monkeypatch)

    scan_dataset(root, hash_cache=cache, check_images=True)
    scan_dataset(root, hash_cache=cache, check_images=False)

    assert len(reads) == 4  # checked once, then both kinds of scan reuse the entries


def test_a_damaged_or_unwritable_hash_cache_only_costs_speed(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "ds", classes={"a": 2, "b": 2})
    expected = scan_dataset(root).fingerprint
    damaged = tmp_path / "scan.json"
    damaged.write_text("{not json")
    blocked = tmp_path / "file" / "scan.json"
    (tmp_path / "file").write_text("a file where the cache folder should be")

    assert scan_dataset(root, hash_cache=damaged).fingerprint == expected
    assert scan_dataset(root, hash_cache=blocked).fingerprint == expected


def test_a_hash_cache_that_cannot_be_written_costs_only_the_speed_up(
    tmp_path, make_image_folder, full_disk
):
    root = make_image_folder(tmp_path / "ds")
    cache = tmp_path / "scans" / "ds.json"

    with full_disk(512):
        scan = scan_dataset(root, hash_cache=cache)

    assert len(scan.items) == 12
    assert list(cache.parent.iterdir()) == []  # no partial file left behind


def test_it_says_which_files_count_when_a_class_has_no_photos(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "ds")
    phone = root / "phone"
    phone.mkdir()
    for name in ("IMG_0001.HEIC", "IMG_0002.HEIC", "IMG_0003"):
        (phone / name).write_bytes(b"not a format Graft reads")

    with pytest.raises(DatasetError) as refused:
        scan_dataset(root)

    message = str(refused.value)
    assert "too few in: phone (0)" in message
    assert "Photos are files ending in .bmp, .gif, .jpeg, .jpg, .png, .webp." in message


def test_it_rejects_a_file_whose_name_is_not_utf8_and_scans_the_rest(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "ds")
    latin1 = root / "a" / "caf\udce9.jpg"  # b"caf\xe9.jpg": "café" written by a Latin-1 system
    shutil.copy(root / "a" / "a_000.jpg", latin1)

    scan = scan_dataset(root)

    assert len(scan.items) == 12 and all(path.isascii() for path, _ in scan.items)
    assert scan.rejected == [("a/caf\ufffd.jpg", "The file name is not valid UTF-8; rename it.")]
    assert len(scan.fingerprint) == 64


def test_it_refuses_a_class_folder_whose_name_is_not_utf8_by_name(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "ds")
    (root / "a").rename(root / "caf\udce9")

    with pytest.raises(DatasetError, match="The class folder name caf\ufffd in .* is not valid"):
        scan_dataset(root)


def test_it_refuses_a_dataset_folder_whose_path_is_not_utf8(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "fotos-\udce9t\udce9")

    with pytest.raises(DatasetError, match="fotos-\ufffdt\ufffd is not valid UTF-8"):
        scan_dataset(root)
