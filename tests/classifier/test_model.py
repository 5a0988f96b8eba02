from __future__ import annotations

import keras
import numpy as np
import pytest

from classifier import model as model_module
from classifier.config import TrainConfig
from classifier.errors import WeightsUnavailableError
from classifier.model import build_head, build_model, get_base, trunk_of, unfreeze_top


def _config(**overrides) -> TrainConfig:
    return TrainConfig(**{"weights": "none", "image_size": 32, "head_units": (8,), **overrides})


def _trainable_backbone_layers(model: keras.Model) -> list[keras.layers.Layer]:
    return [layer for layer in get_base(model).layers if layer.trainable and layer.weights]


@pytest.mark.parametrize("build", ["functional", "sequential"])
def test_it_builds_a_frozen_trunk_with_a_trainable_named_head(build):
    model = build_model(3, _config(build=build))

    names = [layer.name for layer in model.layers]
    assert names[-4:] == ["pool", "head_dense_1", "head_dropout", "predictions"]
    assert "preprocess" in names
    assert _trainable_backbone_layers(model) == []
    trainable = [layer.name for layer in model.layers if layer.trainable_weights]
    assert trainable == ["head_dense_1", "predictions"]

    pixels = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    probs = np.asarray(model.predict_on_batch(pixels))
    assert probs.shape == (2, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_it_preprocesses_like_mobilenet_preprocess_input():
    layer = build_model(2, _config()).get_layer("preprocess")
    pixels = np.array([[0.0, 127.5, 255.0]], dtype="float32")
    expected = keras.applications.mobilenet_v2.preprocess_input(pixels.copy())
    np.testing.assert_allclose(np.asarray(layer(pixels)), expected, atol=1e-6)


def test_it_makes_the_sequential_base_trainable_only_as_one_block():
    model = build_model(2, _config(build="sequential"))
    base = get_base(model)
    assert base in model.layers  # one layer of the Sequential model

    base.trainable = True
    assert all(layer.trainable for layer in base.layers)
    base.trainable = False
    assert not any(layer.trainable for layer in base.layers)


@pytest.mark.parametrize("build", ["functional", "sequential"])
def test_it_keeps_batchnorm_in_inference_mode_while_fine_tuning(build):
    model = build_model(2, _config(build=build))
    unfreeze_top(model, 10)
    pixels = np.random.default_rng(1).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    trunk = trunk_of(model)
    np.testing.assert_allclose(
        np.asarray(trunk(pixels, training=True)),
        np.asarray(trunk(pixels, training=False)),
        atol=1e-6,
    )


@pytest.mark.parametrize("build", ["functional", "sequential"])
def test_it_unfreezes_exactly_the_top_n_non_batchnorm_layers(build):
    model = build_model(2, _config(build=build))
    base = get_base(model)

    names = unfreeze_top(model, 7)

    unfrozen = _trainable_backbone_layers(model)
    assert [layer.name for layer in unfrozen] == names
    assert len(unfrozen) == 7
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in unfrozen)
    with_weights = [
        layer
        for layer in base.layers
        if layer.weights and not isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert unfrozen == with_weights[-7:]
    assert len(model.trainable_weights) == 4 + sum(
        len(layer.trainable_weights) for layer in unfrozen
    )

    assert len(unfreeze_top(model, 10_000)) == len(with_weights)  # more than there are: all
    unfreeze_top(model, 0)
    assert _trainable_backbone_layers(model) == []


def test_it_builds_a_head_whose_weights_copy_into_the_model():
    config = _config()
    model = build_model(3, config)
    head = build_head(3, 1280, config)
    model_module.copy_head_weights(head, model, config)

    pixels = np.random.default_rng(2).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    features = np.asarray(trunk_of(model).predict_on_batch(pixels))
    np.testing.assert_allclose(
        np.asarray(model.predict_on_batch(pixels)),
        np.asarray(head.predict_on_batch(features)),
        atol=1e-5,
    )


def test_it_explains_missing_imagenet_weights(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(model_module, "_keras_model_dirs", lambda: [tmp_path / "models"])
    monkeypatch.setattr(keras.utils, "get_file", offline)

    with pytest.raises(WeightsUnavailableError) as caught:
        build_model(2, _config(weights="imagenet"))
    message = str(caught.value)
    assert "network is unreachable" in message
    assert "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5" in message
    assert "weights=none" in message


def test_it_refuses_a_missing_weights_file(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        build_model(2, _config(weights=str(tmp_path / "nope.h5")))
