"""Export: Keras -> TFLite conversion and the atomic version directory."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from classifier.export import convert_to_tflite  # noqa: E402
from classifier.serving import LiteRTRunner  # noqa: E402

SIZE = 32


def tiny_classifier(num_classes: int = 3, *, size: int = SIZE, seed: int = 0) -> keras.Model:
    """Raw 0-255 pixels -> Rescaling -> conv -> GAP -> softmax, like the real model's shape."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3), name="pixels")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def random_pixels(n: int, size: int = SIZE, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3)).astype(np.float32)


def test_it_converts_a_model_that_agrees_with_keras_at_any_batch_size() -> None:
    model = tiny_classifier()
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


def test_it_refuses_a_model_without_a_fixed_image_size() -> None:
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs))

    with pytest.raises(ValueError, match="fixed image size"):
        convert_to_tflite(model)


def test_runner_rejects_a_batch_of_the_wrong_shape() -> None:
    runner = LiteRTRunner(convert_to_tflite(tiny_classifier()), num_threads=1)

    with pytest.raises(ValueError, match="Expected a batch"):
        runner.run(np.zeros((1, SIZE + 1, SIZE, 3), np.float32))
