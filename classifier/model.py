"""Building the classifier: a MobileNetV2 trunk with a new head grafted on.

The model takes raw float32 pixels in 0-255, ``(N, S, S, 3)``, and returns softmax
probabilities. Preprocessing is the first layer (``Rescaling(1/127.5, offset=-1)``, which is
exactly ``mobilenet_v2.preprocess_input``), so the exported model cannot drift from
training. The head is the recipe's by default: GlobalAveragePooling -> Dense(1024, relu) ->
Dense(512, relu) -> Dropout(0.2) -> Dense(n, softmax), with named layers so a head trained
on cached features (:func:`build_head`) can be copied into the full model
(:func:`copy_head_weights`).

Two build styles, chosen by ``TrainConfig.build``:

* ``"sequential"`` — the recipe's ``keras.Sequential([preprocess, base, pool, head...])``.
  The base is one layer of the model and the recipe treats it as one block, trainable all
  or nothing through ``base.trainable``; it runs with whatever ``training`` flag ``fit``
  passes, so trainable BatchNorm layers would update their statistics on every
  fine-tuning batch (the classic way fine-tuning wrecks a pretrained trunk).
* ``"functional"`` — ``base(x, training=False)`` in a functional graph, the keras-io
  fine-tuning pattern: each backbone layer is addressed on its own and the trunk is meant
  to run in inference mode. Caveat: in Keras 3 the outer ``training`` flag of ``fit``
  overrides the recorded ``training=False``; what really keeps BatchNorm on its moving
  statistics is that a BatchNorm layer with ``trainable=False`` always runs in inference
  mode in Keras 3.

:func:`unfreeze_top` therefore works the same for both: it makes the base trainable (one
block), then freezes all of it except the top N non-BatchNorm layers that have weights;
BatchNorm stays frozen, hence in inference mode, in both styles.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import keras
import numpy as np

from classifier.config import TrainConfig
from classifier.errors import WeightsUnavailableError

BACKBONE = "mobilenet_v2"
WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"
_KERAS_SIZES = (96, 128, 160, 192, 224)


def build_model(num_classes: int, config: TrainConfig) -> keras.Model:
    """Return the full classifier (trunk frozen, head trainable), not compiled.

    Raises:
        WeightsUnavailableError: ``config.weights`` is ``"imagenet"`` and the file is
            neither cached nor downloadable, or a weights file does not fit the trunk.
    """
    size = config.image_size
    base = build_base(config)
    base.trainable = False
    if config.build == "sequential":
        layers = [
            keras.Input((size, size, 3), name="pixels"),
            _preprocess_layer(),
            base,
            keras.layers.GlobalAveragePooling2D(name="pool"),
            *_head_layers(num_classes, config),
        ]
        return keras.Sequential(layers, name="graft_classifier")
    inputs = keras.Input((size, size, 3), name="pixels")
    x = _preprocess_layer()(inputs)
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    for layer in _head_layers(num_classes, config):
        x = layer(x)
    return keras.Model(inputs, x, name="graft_classifier")


def build_base(config: TrainConfig) -> keras.Model:
    """The MobileNetV2 backbone (``include_top=False``) with the configured weights."""
    size = config.image_size
    base = keras.applications.MobileNetV2(
        input_shape=(size, size, 3), alpha=config.alpha, include_top=False, weights=None
    )
    path = resolve_weights(config)
    if path is None:
        _he_init(base, config.seed)
    else:
        try:
            base.load_weights(path)
        except Exception as exc:
            raise WeightsUnavailableError(
                f"The weights file {path} does not fit MobileNetV2 alpha={config.alpha}: {exc}"
            ) from exc
    return base


def build_trunk(config: TrainConfig) -> keras.Model:
    """Preprocessing + backbone + global average pooling: raw pixels -> pooled features.

    The feature extractor for the feature cache; its output is what the head's first Dense
    layer sees in the full model.
    """
    size = config.image_size
    base = build_base(config)
    base.trainable = False
    inputs = keras.Input((size, size, 3), name="pixels")
    x = _preprocess_layer()(inputs)
    x = base(x, training=False)
    outputs = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, outputs, name="graft_trunk")


def build_head(num_classes: int, feature_dim: int, config: TrainConfig) -> keras.Model:
    """The head alone (pooled features -> probabilities), layer names as in the full model."""
    inputs = keras.Input((feature_dim,), name="features")
    x = inputs
    for layer in _head_layers(num_classes, config):
        x = layer(x)
    return keras.Model(inputs, x, name="graft_head")


def head_layer_names(config: TrainConfig) -> list[str]:
    names = [f"head_dense_{i}" for i in range(1, len(config.head_units) + 1)]
    return [*names, "head_dropout", "predictions"]


def copy_head_weights(source: keras.Model, target: keras.Model, config: TrainConfig) -> None:
    """Copy the head layers' weights from ``source`` to ``target`` (matched by name)."""
    for name in head_layer_names(config):
        target.get_layer(name).set_weights(source.get_layer(name).get_weights())


def get_base(model: keras.Model) -> keras.Model:
    """The MobileNetV2 backbone inside a model built here."""
    for layer in model.layers:
        if isinstance(layer, keras.Model) and layer.name.startswith("mobilenetv2"):
            return layer
    raise ValueError("The model has no MobileNetV2 backbone")


def unfreeze_top(model: keras.Model, n: int) -> list[str]:
    """Make exactly the top ``n`` non-BatchNorm backbone layers with weights trainable.

    Everything else in the backbone (including every BatchNormalization layer) is frozen;
    the head stays trainable. In the sequential style the base is one block, so this sets
    ``base.trainable = True`` first (which Keras propagates to every sub-layer) and then
    freezes each layer below the top ``n`` (all of them when ``n`` exceeds the count).
    Recompile the model afterwards.
    Returns the names of the unfrozen layers, bottom to top.
    """
    base = get_base(model)
    base.trainable = True
    candidates = [
        layer
        for layer in base.layers
        if layer.weights and not isinstance(layer, keras.layers.BatchNormalization)
    ]
    chosen = candidates[max(0, len(candidates) - n) :] if n > 0 else []
    chosen_ids = {id(layer) for layer in chosen}
    for layer in base.layers:
        layer.trainable = id(layer) in chosen_ids
    return [layer.name for layer in chosen]


def resolve_weights(config: TrainConfig) -> Path | None:
    """The weights file for ``config.weights`` (``None`` for ``"none"``).

    ``"imagenet"`` goes through Keras's own cache (``KERAS_HOME/models``, downloading when
    it is absent). The no-top convolution weights do not depend on the input size, so when
    the file trained at ``image_size`` is not cached the 224 file is used, as Keras itself
    does for sizes it has no file for.

    Raises:
        WeightsUnavailableError: the file is missing and cannot be downloaded.
    """
    weights = config.weights
    if weights == "none":
        return None
    if weights != "imagenet":
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsUnavailableError(f"The weights file {path} does not exist.")
        return path
    names = [_weights_name(config.alpha, 224)]
    if config.image_size in _KERAS_SIZES and config.image_size != 224:
        names.insert(0, _weights_name(config.alpha, config.image_size))
    for name in names:
        for folder in _keras_model_dirs():
            if (folder / name).is_file():
                return folder / name
    name = names[0]
    try:
        return Path(keras.utils.get_file(name, WEIGHTS_URL + name, cache_subdir="models"))
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        folder = _keras_model_dirs()[0]
        raise WeightsUnavailableError(
            f"ImageNet weights could not be downloaded: {reason}. Put the file {names[-1]} "
            f"in {folder} or choose weights=none"
        ) from exc


def weights_identity(config: TrainConfig) -> str:
    """A string that changes whenever the trunk's weights would: file sha256, or none+seed."""
    path = resolve_weights(config)
    if path is None:
        return f"none-seed{config.seed}"
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _he_init(base: keras.Model, seed: int) -> None:
    """Re-draw every convolution kernel with He-normal scaling from ``seed``.

    Keras's default Glorot init shrinks the signal ~10x per MobileNetV2 block, so a frozen
    random trunk outputs ~1e-12 and no head can learn from it. Variance-preserving kernels
    keep pooled features near unit scale: ``weights="none"`` (tests, from-scratch runs) then
    gives a usable, reproducible random feature extractor.
    """
    rng = np.random.default_rng(seed)
    for layer in base.layers:
        if isinstance(layer, keras.layers.Conv2D | keras.layers.DepthwiseConv2D):
            kernel, *rest = layer.get_weights()
            if isinstance(layer, keras.layers.DepthwiseConv2D):
                fan_in = kernel.shape[0] * kernel.shape[1]
            else:
                fan_in = kernel.shape[0] * kernel.shape[1] * kernel.shape[2]
            kernel = rng.normal(0.0, np.sqrt(2.0 / fan_in), kernel.shape).astype(np.float32)
            layer.set_weights([kernel, *rest])


def _weights_name(alpha: float, rows: int) -> str:
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{rows}_no_top.h5"


def _keras_model_dirs() -> list[Path]:
    from keras.src.backend.config import keras_home

    home = Path(os.path.expanduser(keras_home()))
    return [home / "models", Path("/tmp/.keras/models")]


def _preprocess_layer() -> keras.layers.Layer:
    return keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess")


def _head_layers(num_classes: int, config: TrainConfig) -> list[keras.layers.Layer]:
    # Initialisers and dropout seeded from config.seed alone, so build_head and build_model
    # give the same head whatever was built before, in whichever thread (Keras draws unseeded
    # layers' seeds from Python's global random, which a background build also draws from).
    def dense(units: int, activation: str, name: str, offset: int) -> keras.layers.Dense:
        initializer = keras.initializers.GlorotUniform(seed=config.seed + offset)
        return keras.layers.Dense(
            units, activation=activation, kernel_initializer=initializer, name=name
        )

    layers: list[keras.layers.Layer] = [
        dense(units, "relu", f"head_dense_{i}", i)
        for i, units in enumerate(config.head_units, start=1)
    ]
    layers.append(keras.layers.Dropout(config.dropout, seed=config.seed, name="head_dropout"))
    layers.append(dense(num_classes, "softmax", "predictions", len(layers)))
    return layers


def trunk_of(model: keras.Model) -> keras.Model:
    """The full model's preprocessing + backbone + pooling as a model of its own (shared layers)."""
    return keras.Model(model.inputs, model.get_layer("pool").output, name="graft_trunk")
