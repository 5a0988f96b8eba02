from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from classifier import features as features_module
from classifier.config import TrainConfig
from classifier.data import scan_dataset
from classifier.errors import TrainingCancelled
from classifier.features import cache_key, extract_features
from classifier.model import build_model, trunk_of


@pytest.fixture
def no_litert(monkeypatch):
    """Extract with TensorFlow: converting a trunk for LiteRT takes seconds per test."""
    monkeypatch.setattr(features_module, "trunk_tflite", lambda *args: None)


def _config(**overrides) -> TrainConfig:
    return TrainConfig(**{"weights": "none", "image_size": 32, "head_units": (8,), **overrides})


def _extract(root: Path, cache_dir: Path, config: TrainConfig, built: list | None = None, **kw):
    scan = scan_dataset(root, check_images=False)
    relpaths = [path for path, _ in scan.items]
    hashes = [scan.file_hash(path) for path in relpaths]

    def factory() -> keras.Model:
        keras.utils.set_random_seed(config.seed)
        model = trunk_of(build_model(len(scan.class_names), config))
        if built is not None:
            built.append(model)
        return model

    return relpaths, extract_features(
        root, relpaths, hashes, config=config, cache_dir=cache_dir, trunk_factory=factory, **kw
    )


def test_it_extracts_once_then_hits_the_cache(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "ds", classes={"a": 4, "b": 3})
    config = _config()
    built: list = []

    relpaths, first = _extract(root, tmp_path / "cache", config, built)
    _, second = _extract(root, tmp_path / "cache", config, built)

    assert not first.cache_hit and first.extracted == 7
    assert first.features.shape == (7, 1280) and first.kept == list(range(7))
    assert second.cache_hit and second.extracted == 0
    np.testing.assert_array_equal(second.features, first.features)
    assert len(built) == 1  # the trunk was built (and converted) only for the miss
    assert first.engine == "litert" and second.engine == "cache"
    assert len(list((tmp_path / "cache" / "trunks").glob("*.tflite"))) == 1
    from classifier.images import load_image

    pixels = np.stack([load_image(root / p, 32) for p in relpaths]).astype("float32")
    expected = np.asarray(built[0].predict_on_batch(pixels))
    np.testing.assert_allclose(first.features, expected, atol=1e-4)


def test_it_extracts_only_changed_photos(tmp_path, make_image_folder, no_litert):
    root = make_image_folder(tmp_path / "ds", classes={"a": 4, "b": 3})
    config = _config()
    _extract(root, tmp_path / "cache", config)

    (root / "a" / "a_000.jpg").write_bytes((root / "b" / "b_000.jpg").read_bytes())
    make_image_folder(tmp_path / "more", classes={"a": 2, "b": 0}, seed=9)
    (root / "a" / "new.png").write_bytes((tmp_path / "more" / "a" / "a_001.png").read_bytes())
    _, after = _extract(root, tmp_path / "cache", config)

    assert not after.cache_hit
    assert after.extracted == 1  # a_000 now has b_000's content, which is cached
    assert after.features.shape == (8, 1280)


def test_it_misses_for_another_trunk(tmp_path, make_image_folder, no_litert):
    root = make_image_folder(tmp_path / "ds", classes={"a": 2, "b": 2})
    _extract(root, tmp_path / "cache", _config())

    _, other = _extract(root, tmp_path / "cache", _config(image_size=48))

    assert not other.cache_hit and other.extracted == 4
    keys = {cache_key(_config(**change)) for change in ({"alpha": 0.35}, {"seed": 5}, {})}
    assert len(keys | {cache_key(_config(image_size=48))}) == 4
    assert cache_key(_config(epochs=9, learning_rate=0.1)) == cache_key(_config())


def test_it_remembers_undecodable_photos(tmp_path, make_image_folder, no_litert):
    root = make_image_folder(tmp_path / "ds", classes={"a": 3, "b": 2})
    (root / "a" / "bad.jpg").write_bytes(b"junk")

    relpaths, first = _extract(root, tmp_path / "cache", _config())
    _, second = _extract(root, tmp_path / "cache", _config())

    position = relpaths.index("a/bad.jpg")
    assert [i for i, _ in first.failures] == [position]
    assert position not in first.kept and first.features.shape[0] == 5
    assert second.cache_hit and second.failures == first.failures


def test_it_falls_back_to_tensorflow_when_conversion_fails(tmp_path, make_image_folder, no_litert):
    root = make_image_folder(tmp_path / "ds", classes={"a": 2, "b": 2})

    _, result = _extract(root, tmp_path / "cache", _config())

    assert result.engine == "tensorflow" and result.features.shape == (4, 1280)


def test_it_stores_nothing_when_extraction_is_cancelled(tmp_path, make_image_folder, no_litert):
    root = make_image_folder(tmp_path / "ds", classes={"a": 2, "b": 2})

    def cancel(done: int, total: int) -> None:
        raise TrainingCancelled("stop")

    with pytest.raises(TrainingCancelled):
        _extract(root, tmp_path / "cache", _config(), progress=cancel)
    _, again = _extract(root, tmp_path / "cache", _config())
    assert again.extracted == 4


@pytest.mark.parametrize("photos", [0, 1, 5, 32])
def test_the_parallel_trunk_gives_each_photo_its_own_row_in_order(photos: int) -> None:
    from classifier.export import convert_to_tflite
    from classifier.serving import LiteRTRunner
    from tests.classifier.conftest import tiny_classifier

    content = convert_to_tflite(tiny_classifier())
    pixels = np.random.default_rng(photos).integers(0, 256, (photos, 32, 32, 3))
    pixels = pixels.astype(np.float32)

    parallel = features_module._ParallelTrunk(content, workers=2).run(pixels)
    whole = LiteRTRunner(content, num_threads=1).run(pixels)

    assert parallel.shape == whole.shape == (photos, 3)
    np.testing.assert_allclose(parallel, whole, atol=1e-5)


def test_a_full_disk_leaves_no_partial_shard_in_the_cache(
    tmp_path, make_image_folder, no_litert, full_disk
):
    root = make_image_folder(tmp_path / "ds")
    config = _config()

    with full_disk(1 << 13), pytest.raises(OSError):
        _extract(root, tmp_path / "cache", config)

    folder = tmp_path / "cache" / "features" / cache_key(config)
    assert [p.name for p in folder.iterdir()] == [".lock"]
