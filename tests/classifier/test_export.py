"""Export: Keras -> TFLite conversion and the atomic version directory."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from classifier import export  # noqa: E402
from classifier.config import TrainConfig  # noqa: E402
from classifier.errors import ArtifactError  # noqa: E402
from classifier.export import convert_to_tflite, export_version  # noqa: E402
from classifier.images import load_image  # noqa: E402
from classifier.serving import LiteRTRunner, Predictor, sha256_file  # noqa: E402

SIZE = 32


def random_pixels(n: int, size: int = SIZE, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3)).astype(np.float32)


def test_it_converts_a_model_that_agrees_with_keras_at_any_batch_size(make_tiny_model) -> None:
    model = make_tiny_model()
    runner = LiteRTRunner(convert_to_tflite(model), num_threads=1)
    pixels = random_pixels(5)
    expected = model.predict_on_batch(pixels)

    for batch in (pixels[:1], pixels, pixels[:3], pixels[:1]):
        np.testing.assert_allclose(runner.run(batch), expected[: len(batch)], atol=1e-4)


def test_it_converts_a_sequential_feature_extractor() -> None:
    model = keras.Sequential(
        [
            keras.Input((SIZE, SIZE, 3)),
            keras.layers.Rescaling(1 / 127.5, offset=-1),
            keras.layers.Conv2D(6, 3),
            keras.layers.GlobalAveragePooling2D(),
        ]
    )
    runner = LiteRTRunner(convert_to_tflite(model), num_threads=1)
    pixels = random_pixels(2)

    np.testing.assert_allclose(runner.run(pixels), model.predict_on_batch(pixels), atol=1e-4)
    assert runner.input_shape == (SIZE, SIZE, 3)
    assert runner.output_shape == (6,)


def test_it_refuses_a_model_without_a_fixed_image_size() -> None:
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs))

    with pytest.raises(ValueError, match="fixed image size"):
        convert_to_tflite(model)


def test_runner_rejects_a_batch_of_the_wrong_shape(tiny_version: Path) -> None:
    runner = LiteRTRunner(tiny_version / "model.tflite", num_threads=1)

    with pytest.raises(ValueError, match="Expected a batch"):
        runner.run(np.zeros((1, SIZE + 1, SIZE, 3), np.float32))


def test_it_writes_a_complete_version_with_checksums(tiny_version: Path) -> None:
    names = sorted(p.name for p in tiny_version.iterdir())
    meta = json.loads((tiny_version / "metadata.json").read_text())

    assert names == ["labels.json", "metadata.json", "model.keras", "model.tflite"]
    assert json.loads((tiny_version / "labels.json").read_text()) == ["cat", "dog", "eel"]
    assert meta["class_names"] == ["cat", "dog", "eel"]
    assert meta["image_size"] == SIZE
    assert meta["config"] == TrainConfig(image_size=SIZE, weights="none", epochs=1).to_dict()
    assert meta["metrics"] == {"val_accuracy": 0.5, "val_loss": 1.0}
    assert meta["history"] == [{"epoch": 1, "loss": 1.1, "accuracy": 0.4}]
    assert meta["dataset"]["fingerprint"] == "f" * 16
    assert meta["created_at"].endswith("+00:00")
    assert set(meta["libraries"]) >= {"tensorflow", "keras", "numpy", "pillow", "ai-edge-litert"}
    assert meta["tflite_max_abs_diff"] <= 1e-4
    for name in ("model.keras", "model.tflite", "labels.json"):
        assert meta["files"][name]["sha256"] == sha256_file(tiny_version / name)
    assert not [p for p in tiny_version.parent.iterdir() if p.name.startswith(".")]


def test_export_round_trip_keras_and_litert_agree_on_the_same_images(
    tiny_version: Path, make_image_folder, tmp_path: Path
) -> None:
    root = make_image_folder(tmp_path / "photos", classes={"a": 3, "b": 3})
    pixels = np.stack([load_image(p, SIZE) for p in sorted(root.rglob("*.*"))])
    keras_model = keras.saving.load_model(tiny_version / "model.keras")

    served = Predictor.load(tiny_version, num_threads=1).predict_array(pixels)

    np.testing.assert_allclose(
        served, keras_model.predict_on_batch(pixels.astype(np.float32)), atol=1e-4
    )


def test_it_refuses_to_overwrite_an_existing_version(tiny_version: Path, make_tiny_version) -> None:
    before = sha256_file(tiny_version / "metadata.json")

    with pytest.raises(FileExistsError):
        make_tiny_version(tiny_version)

    assert sha256_file(tiny_version / "metadata.json") == before


def test_it_leaves_nothing_behind_when_writing_fails(
    tmp_path: Path, make_tiny_version, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_json(value: object) -> bytes:
        raise OSError("disk full")

    monkeypatch.setattr(export, "_to_json", broken_json)

    with pytest.raises(OSError, match="disk full"):
        make_tiny_version(tmp_path / "v1")

    assert list(tmp_path.iterdir()) == []


def test_it_refuses_class_names_that_do_not_fit_the_model(tmp_path: Path, make_tiny_model) -> None:
    with pytest.raises(ArtifactError, match="3 outputs but 2 class names"):
        export_version(
            make_tiny_model(),
            tmp_path / "v1",
            class_names=["a", "b"],
            config=TrainConfig(image_size=SIZE, weights="none"),
            metrics={},
            history=[],
            dataset={},
        )
    assert list(tmp_path.iterdir()) == []


def test_it_writes_numpy_values_and_nan_as_strict_json(tmp_path: Path, make_tiny_model) -> None:
    version = export_version(
        make_tiny_model(),
        tmp_path / "v1",
        class_names=["a", "b", "c"],
        config=TrainConfig(image_size=SIZE, weights="none"),
        metrics={"val_accuracy": np.float32(0.75), "confusion": np.eye(2, dtype=np.int64)},
        history=[{"loss": float("nan")}],
        dataset={"root": tmp_path},
    )

    meta = json.loads((version / "metadata.json").read_text())
    assert meta["metrics"] == {"val_accuracy": 0.75, "confusion": [[1, 0], [0, 1]]}
    assert meta["history"] == [{"loss": None}]
    assert meta["dataset"] == {"root": tmp_path.as_posix()}


@pytest.mark.parametrize("build", ["functional", "sequential"])
def test_it_converts_the_real_architecture_in_both_build_styles(build: str) -> None:
    from classifier.model import build_model

    model = build_model(4, TrainConfig(image_size=SIZE, alpha=0.35, weights="none", build=build))
    pixels = random_pixels(2)

    runner = LiteRTRunner(convert_to_tflite(model), num_threads=1)

    np.testing.assert_allclose(runner.run(pixels), model.predict_on_batch(pixels), atol=1e-4)


def test_it_removes_only_the_stale_export_temporaries(tmp_path: Path) -> None:
    hours_ago = time.time() - 2 * 3600
    stale = tmp_path / ".job-3-1.tmp-k2j4h1"
    fresh = tmp_path / ".job-4-1.tmp-p9x8c7"
    old_version = tmp_path / "v1"
    old_hidden = tmp_path / ".staging"
    for folder in (stale, fresh, old_version, old_hidden):
        folder.mkdir()
        (folder / "model.tflite").write_bytes(b"x")
    for folder in (stale, old_version, old_hidden):
        os.utime(folder, (hours_ago, hours_ago))
    stale_file = tmp_path / ".v2.tmp-notafolder"
    stale_file.write_bytes(b"x")
    os.utime(stale_file, (hours_ago, hours_ago))

    removed = export.remove_stale_temporaries(tmp_path, older_than_seconds=3600)

    assert removed == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [fresh.name, old_version.name, old_hidden.name, stale_file.name]
    )
    assert export.remove_stale_temporaries(tmp_path / "missing", older_than_seconds=0) == []


def _trunk_and_head(feature_dim: int = 8, head_input: int | None = None):
    keras.utils.set_random_seed(3)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.Conv2D(feature_dim, 3, strides=2, activation="relu")(x)
    x = keras.layers.BatchNormalization()(x)
    trunk = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    features = keras.Input((head_input or feature_dim,))
    y = keras.layers.Dense(16, activation="relu", bias_initializer="random_normal")(features)
    y = keras.layers.Dropout(0.2)(y)
    y = keras.layers.Dense(3, activation="softmax", bias_initializer="random_normal")(y)
    head = keras.Model(features, y)
    return trunk, head


def test_a_head_grafted_onto_a_converted_trunk_computes_the_whole_model() -> None:
    trunk, head = _trunk_and_head()
    whole = keras.Model(trunk.inputs, head(trunk.outputs[0]))
    pixels = random_pixels(4)

    grafted = export.graft_tflite(convert_to_tflite(trunk), head)

    runner = LiteRTRunner(grafted, num_threads=1)
    assert runner.output_shape == (3,)
    np.testing.assert_allclose(runner.run(pixels), np.asarray(whole(pixels)), atol=1e-5)
    np.testing.assert_allclose(runner.run(pixels[:1]), np.asarray(whole(pixels[:1])), atol=1e-5)


@pytest.mark.parametrize(
    "layers",
    [
        # Written directly: Dense stacks, with or without biases, softmax or linear output.
        [{"units": 4, "activation": "relu", "use_bias": False}, {"units": 3}],
        [{"units": 3, "activation": "softmax"}],
        # Anything else goes through the converter.
        [{"units": 4, "activation": "tanh"}, {"units": 3, "activation": "softmax"}],
        [{"units": 4, "activation": "relu"}, "norm", {"units": 3, "activation": "softmax"}],
    ],
    ids=["no-bias-linear", "one-softmax", "tanh", "batchnorm"],
)
def test_any_head_grafts_to_the_whole_model(layers: list) -> None:
    trunk, _ = _trunk_and_head()
    features = keras.Input((8,))
    y = features
    for spec in layers:
        if spec == "norm":
            y = keras.layers.BatchNormalization()(y)
        else:
            y = keras.layers.Dense(bias_initializer="random_normal", **spec)(y)
    head = keras.Model(features, y)
    whole = keras.Model(trunk.inputs, head(trunk.outputs[0]))
    pixels = random_pixels(3)
    written = export._dense_head_model(head)

    grafted = export.graft_tflite(convert_to_tflite(trunk), head)

    assert (written is None) == (layers[0].get("activation") == "tanh" or "norm" in layers)
    got = LiteRTRunner(grafted, num_threads=1).run(pixels)
    np.testing.assert_allclose(got, np.asarray(whole(pixels)), atol=1e-5)


def test_it_refuses_to_graft_a_head_that_does_not_fit_the_trunk() -> None:
    trunk, head = _trunk_and_head(feature_dim=8, head_input=6)

    with pytest.raises(ArtifactError, match="does not fit"):
        export.graft_tflite(convert_to_tflite(trunk), head)


def test_an_export_records_whether_its_tflite_was_grafted_and_checks_it_all_the_same(
    tmp_path: Path,
) -> None:
    trunk, head = _trunk_and_head()
    whole = keras.Model(trunk.inputs, head(trunk.outputs[0]))
    common = dict(
        class_names=["a", "b", "c"],
        config=TrainConfig(image_size=SIZE, weights="none", epochs=1),
        metrics={},
        history=[],
        dataset={},
    )

    grafted = export_version(
        whole, tmp_path / "g", tflite=export.graft_tflite(convert_to_tflite(trunk), head), **common
    )
    converted = export_version(whole, tmp_path / "c", **common)
    other_head = _trunk_and_head()[1]
    other_head.layers[1].set_weights([w + 1 for w in other_head.layers[1].get_weights()])
    wrong = export.graft_tflite(convert_to_tflite(trunk), other_head)

    assert json.loads((grafted / "metadata.json").read_text())["tflite_origin"] == (
        "grafted onto the cached trunk"
    )
    assert json.loads((converted / "metadata.json").read_text())["tflite_origin"] == (
        "whole model converted"
    )
    with pytest.raises(ArtifactError, match="disagrees"):
        export_version(whole, tmp_path / "w", tflite=wrong, **common)
    assert not (tmp_path / "w").exists()
