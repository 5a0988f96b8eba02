from __future__ import annotations

import numpy as np

from classifier.data import scan_dataset
from classifier.images import load_image
from classifier.pipeline import iter_batches, make_dataset


def test_it_streams_batches_decoded_exactly_like_serving(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "ds", classes={"a": 3, "b": 2})
    items = scan_dataset(root).items

    batches = list(make_dataset(root, items, image_size=24, batch_size=2))

    assert [len(y) for _, y in batches] == [2, 2, 1]
    pixels = np.concatenate([x.numpy() for x, _ in batches])
    labels = np.concatenate([y.numpy() for _, y in batches])
    assert pixels.dtype == np.float32 and pixels.shape == (5, 24, 24, 3)
    assert labels.tolist() == [label for _, label in items]
    expected = np.stack([load_image(root / path, 24) for path, _ in items]).astype(np.float32)
    np.testing.assert_array_equal(pixels, expected)


def test_it_shuffles_reproducibly_and_augments_in_range(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "ds", classes={"a": 6, "b": 6})
    items = scan_dataset(root).items

    def order(seed: int) -> list[int]:
        dataset = make_dataset(root, items, image_size=16, batch_size=4, shuffle=True, seed=seed)
        return [int(v) for _, y in dataset for v in y.numpy()]

    assert order(3) == order(3)
    assert sorted(order(3)) == sorted(label for _, label in items)

    augmented = make_dataset(root, items, image_size=16, batch_size=12, augment=True, seed=1)
    pixels = next(iter(augmented))[0].numpy()
    plain = next(iter(make_dataset(root, items, image_size=16, batch_size=12)))[0].numpy()
    assert pixels.shape == plain.shape
    assert pixels.min() >= 0 and pixels.max() <= 255.5
    assert not np.allclose(pixels, plain)


def test_it_reports_unreadable_photos_from_the_thread_pool(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "ds", classes={"a": 3, "b": 2})
    (root / "a" / "bad.jpg").write_bytes(b"junk")
    relpaths = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.*g"))

    batches = list(iter_batches(root, relpaths, image_size=8, batch_size=4, ahead=1))

    assert [b.indices for b in batches] == [[0, 1, 2], [4, 5]]
    assert [index for b in batches for index, _ in b.failures] == [3]
    assert relpaths[3] == "a/bad.jpg"
    np.testing.assert_array_equal(batches[1].pixels[0], load_image(root / relpaths[4], 8))
