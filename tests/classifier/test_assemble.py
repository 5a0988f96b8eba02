"""model.keras written from a cached template instead of building the full model."""

from __future__ import annotations

import dataclasses
import functools
import json
import zipfile

import keras
import numpy as np
import pytest

from classifier import assemble, export
from classifier import train as train_module
from classifier.config import TrainConfig
from classifier.errors import ArtifactError
from classifier.model import build_head, head_layer_names
from classifier.serving import LiteRTRunner
from classifier.train import train
from tests.classifier.conftest import small_train_config

CLASSES = {"a": 10, "b": 10, "c": 10}


@pytest.fixture
def dataset(tmp_path, make_image_folder):
    return make_image_folder(tmp_path / "ds", classes=CLASSES)


_config = functools.partial(small_train_config, epochs=3)


def _save_model_around(head: keras.Model, config: TrainConfig, path) -> None:
    """Save a small stand-in for the full model: one Dense "trunk", then ``head``'s layers."""
    inputs = keras.Input((16,))
    outputs = keras.layers.Dense(16, name="trunk_like")(inputs)
    for name in head_layer_names(config):
        outputs = head.get_layer(name)(outputs)
    keras.Model(inputs, outputs).save(path)


def _meta(version) -> dict:
    return json.loads((version / "metadata.json").read_text())


def _member(version, name: str) -> bytes:
    with zipfile.ZipFile(version / "model.keras") as archive:
        return archive.read(name)


def test_a_later_job_writes_its_model_keras_from_the_template_without_building_the_model(
    tmp_path, dataset, monkeypatch
):
    cache = tmp_path / "cache"
    first = train(dataset, _config(), out_dir=tmp_path / "v1", cache_dir=cache)
    assert _meta(first.version_dir)["keras_origin"] == "saved"
    assert len(list((cache / "models").glob("*.keras"))) == 1

    # Other epochs and learning rate: another head, the same model around it.
    def refuse(*args, **kwargs):
        raise AssertionError("the full model was built")

    monkeypatch.setattr(train_module, "build_model", refuse)
    config = _config(epochs=2, learning_rate=1e-2)
    second = train(dataset, config, out_dir=tmp_path / "v2", cache_dir=cache)
    monkeypatch.undo()

    meta = _meta(second.version_dir)
    assert meta["keras_origin"] == "the cached template with this head's weights"
    assert meta["tflite_origin"] == "grafted onto the cached trunk"
    assert meta["tflite_max_abs_diff"] <= 1e-4
    assert _member(second.version_dir, "config.json") == _member(first.version_dir, "config.json")

    # The assembled file is a whole Keras model with the second job's head: it computes
    # what the second version's flatbuffer computes, and not what the first one's does.
    loaded = keras.saving.load_model(second.version_dir / "model.keras")
    pixels = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3)).astype(np.float32)
    probs = np.asarray(loaded(pixels, training=False))
    ours = LiteRTRunner((second.version_dir / "model.tflite").read_bytes()).run(pixels)
    theirs = LiteRTRunner((first.version_dir / "model.tflite").read_bytes()).run(pixels)
    assert np.max(np.abs(probs - ours)) <= 1e-4
    assert np.max(np.abs(probs - theirs)) > 1e-3
    assert json.loads(_member(second.version_dir, "metadata.json"))["keras_version"] == (
        keras.__version__
    )


def test_a_damaged_template_is_replaced_and_the_job_saves_the_whole_model(tmp_path, dataset):
    cache = tmp_path / "cache"
    train(dataset, _config(), out_dir=tmp_path / "v1", cache_dir=cache)
    (template,) = (cache / "models").glob("*.keras")
    content = bytearray(template.read_bytes())
    content[len(content) // 2] ^= 0xFF
    template.unlink()  # a hard link to v1's file: break the link before damaging it
    template.write_bytes(bytes(content))

    second = train(dataset, _config(epochs=2), out_dir=tmp_path / "v2", cache_dir=cache)

    assert _meta(second.version_dir)["keras_origin"] == "saved"
    assert _meta(tmp_path / "v1")["files"]["model.keras"]["sha256"] == (
        assemble.hashlib.sha256((tmp_path / "v1" / "model.keras").read_bytes()).hexdigest()
    )
    (renewed,) = (cache / "models").glob("*.keras")
    assert renewed.read_bytes() == (second.version_dir / "model.keras").read_bytes()

    third = train(dataset, _config(epochs=1), out_dir=tmp_path / "v3", cache_dir=cache)
    assert _meta(third.version_dir)["keras_origin"].startswith("the cached template")


def test_a_job_that_exports_nothing_never_builds_the_full_model(tmp_path, dataset, monkeypatch):
    cache = tmp_path / "cache"
    train(dataset, _config(), cache_dir=cache)  # extracts (and builds, to convert the trunk)

    def refuse(*args, **kwargs):
        raise AssertionError("the full model was built")

    monkeypatch.setattr(train_module, "build_model", refuse)
    result = train(dataset, _config(epochs=2), cache_dir=cache)

    assert result.metrics["accuracy"] >= 0.9
    assert result.version_dir is None


@pytest.mark.parametrize(
    ("change", "same"),
    [
        ({"epochs": 9, "learning_rate": 1e-1, "early_stopping_patience": 2}, True),
        ({"seed": 7}, False),  # the head's initialisers and dropout are seeded
        ({"head_units": (16,)}, False),
        ({"dropout": 0.5}, False),
        ({"build": "sequential"}, False),
        ({"image_size": 48}, False),
    ],
)
def test_a_template_serves_only_models_that_differ_in_head_weights_alone(tmp_path, change, same):
    config = _config(build="functional")
    other = dataclasses.replace(config, **change)

    def path(config: TrainConfig, classes: int = 3):
        return assemble.template_paths(tmp_path, "key", build_head(classes, 64, config), config)

    assert (path(config) == path(other)) is same
    assert path(config) != path(config, classes=4)
    assert (
        path(config)[0]
        != assemble.template_paths(tmp_path, "other-key", build_head(3, 64, config), config)[0]
    )


def test_a_template_needs_every_head_weight_once_in_the_saved_model(tmp_path):
    config = _config(head_units=(8,))
    head = build_head(2, 16, config)
    _save_model_around(head, config, tmp_path / "model.keras")

    found = assemble.save_template(
        tmp_path / "cache", "key", head, config, tmp_path / "model.keras"
    )
    template = assemble.find_template(tmp_path / "cache", "key", head, config)
    assert found is not None and template is not None
    assert sorted(template.datasets) == ["head_dense_1", "head_dropout", "predictions"]

    stranger = build_head(2, 16, dataclasses.replace(config, seed=5))
    assert assemble.find_template(tmp_path / "cache", "key", stranger, config) is None
    with pytest.raises(ArtifactError, match="datasets of the saved model"):
        assemble._locate_head((tmp_path / "model.keras").read_bytes(), stranger, config)


def test_an_assembled_export_refuses_a_flatbuffer_that_disagrees_with_its_head(
    tmp_path, monkeypatch
):
    config = _config(head_units=(8,))
    trunk = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.GlobalAveragePooling2D()])
    head = build_head(3, 3, config)
    other = build_head(3, 3, dataclasses.replace(config, seed=11))
    real_graft = export.graft_tflite
    monkeypatch.setattr(export, "graft_tflite", lambda trunk, _head: real_graft(trunk, other))

    with pytest.raises(ArtifactError, match="disagrees"):
        export.export_assembled_version(
            head,
            tmp_path / "v",
            model_keras=b"unused",
            trunk_tflite=export.convert_to_tflite(trunk),
            class_names=["a", "b", "c"],
            config=config,
            metrics={},
            history=[],
            dataset={},
        )
    assert list(tmp_path.iterdir()) == []


def test_a_template_is_copied_where_it_cannot_be_linked(tmp_path, monkeypatch):
    config = _config(head_units=(8,))
    head = build_head(2, 16, config)
    _save_model_around(head, config, tmp_path / "model.keras")

    def cross_device(source, target):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(assemble.os, "link", cross_device)
    path = assemble.save_template(tmp_path / "cache", "key", head, config, tmp_path / "model.keras")

    assert path is not None
    assert path.read_bytes() == (tmp_path / "model.keras").read_bytes()
    assert path.stat().st_ino != (tmp_path / "model.keras").stat().st_ino
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []
