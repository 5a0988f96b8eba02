"""Turning a trained Keras model into a model version directory that serving can load.

A version directory holds ``model.keras`` (for further training and for Keras users),
``model.tflite`` (what the web process serves through LiteRT, preprocessing included),
``labels.json`` and ``metadata.json`` (config, metrics, history, dataset, library versions,
and the sha256 of every other file). It is written to a temporary directory beside its final
place and renamed into place, so a reader never sees half a version.

This module imports TensorFlow; the serving side (``classifier.serving``) does not.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from classifier.config import TrainConfig
from classifier.errors import ArtifactError
from classifier.images import RESIZE_TF
from classifier.serving import (
    FORMAT_VERSION,
    LABELS,
    METADATA,
    MODEL_KERAS,
    MODEL_TFLITE,
    LiteRTRunner,
    sha256_file,
)

# Keras and LiteRT must agree this closely on the same pixels, or the export is refused.
AGREEMENT_TOLERANCE = 1e-4
# metadata.json's tflite_origin
TFLITE_GRAFTED = "grafted onto the cached trunk"
TFLITE_CONVERTED = "whole model converted"


def export_version(
    model: keras.Model,
    out_dir: str | Path,
    *,
    class_names: list[str],
    config: TrainConfig,
    metrics: dict[str, Any],
    history: list[dict[str, Any]],
    dataset: dict[str, Any],
    tflite: bytes | None = None,
) -> Path:
    """Write a complete model version directory at ``out_dir`` atomically and return it.

    The files are written into a temporary directory beside ``out_dir`` (same filesystem)
    and renamed into place, so ``out_dir`` either does not exist or holds a whole version.
    Before it is renamed into place, the TFLite model is checked against Keras on a few
    deterministic images (on failure the temporary directory is removed).

    Args:
        model: the classifier: raw float32 0-255 pixels ``(N, S, S, 3)`` -> softmax probs.
        out_dir: where the version goes; must not exist yet.
        class_names: one name per output, in output order.
        config, metrics, history, dataset: repeated in ``metadata.json`` (``dataset`` should
            carry the fingerprint, class counts and the file list trained on).
        tflite: a flatbuffer already made for ``model`` (``graft_tflite``); the whole
            model is converted when there is none. Either way it must agree with Keras
            before the version is put in place.

    Raises:
        FileExistsError: ``out_dir`` already exists.
        ArtifactError: the model does not match ``class_names`` or the converted model
            disagrees with Keras.
    """
    image_size = int(_input_spec(model).shape[1])
    _check_outputs(int(model.outputs[0].shape[-1]), class_names)

    def write_models(tmp: Path) -> dict[str, Any]:
        model.save(tmp / MODEL_KERAS)
        _fsync_file(tmp / MODEL_KERAS)
        grafted = tflite is not None
        content = tflite if grafted else convert_to_tflite(model)
        max_diff = _check_agreement(model, content, image_size)
        _write_bytes(tmp / MODEL_TFLITE, content)
        return {
            "tflite_max_abs_diff": max_diff,
            "tflite_origin": TFLITE_GRAFTED if grafted else TFLITE_CONVERTED,
            "tflite_check": "the whole model against Keras",
            "keras_origin": "saved",
        }

    return _write_version(
        Path(out_dir),
        write_models,
        image_size=image_size,
        class_names=class_names,
        config=config,
        metrics=metrics,
        history=history,
        dataset=dataset,
    )


def export_assembled_version(
    head: keras.Model,
    out_dir: str | Path,
    *,
    model_keras: bytes,
    trunk_tflite: bytes,
    class_names: list[str],
    config: TrainConfig,
    metrics: dict[str, Any],
    history: list[dict[str, Any]],
    dataset: dict[str, Any],
) -> Path:
    """:func:`export_version` for a model that was never built whole: a head trained on
    the cached trunk's features, its ``model.keras`` written from a template
    (``classifier.assemble``) and its flatbuffer grafted onto the cached trunk.

    The check is the head's: the grafted flatbuffer must give, on the same deterministic
    images, what the Keras head gives on the cached trunk's own output, within
    :data:`AGREEMENT_TOLERANCE`. The trunk's conversion was checked against the whole Keras
    model by the export that made the template.

    Raises:
        FileExistsError: ``out_dir`` already exists.
        ArtifactError: the head does not match ``class_names``, or the grafted flatbuffer
            disagrees with it.
    """
    _check_outputs(int(head.outputs[0].shape[-1]), class_names)
    image_size = int(config.image_size)
    tflite = graft_tflite(trunk_tflite, head)

    def write_models(tmp: Path) -> dict[str, Any]:
        _write_bytes(tmp / MODEL_KERAS, model_keras)
        max_diff = _check_graft(head, trunk_tflite, tflite, image_size)
        _write_bytes(tmp / MODEL_TFLITE, tflite)
        return {
            "tflite_max_abs_diff": max_diff,
            "tflite_origin": TFLITE_GRAFTED,
            "tflite_check": "the head against Keras on the cached trunk's output",
            "keras_origin": "the cached template with this head's weights",
        }

    return _write_version(
        Path(out_dir),
        write_models,
        image_size=image_size,
        class_names=class_names,
        config=config,
        metrics=metrics,
        history=history,
        dataset=dataset,
    )


def _check_outputs(num_outputs: int, class_names: list[str]) -> None:
    if num_outputs != len(class_names):
        raise ArtifactError(
            f"The model has {num_outputs} outputs but {len(class_names)} class names were given."
        )


def _write_version(
    out_dir: Path,
    write_models: Callable[[Path], dict[str, Any]],
    *,
    image_size: int,
    class_names: list[str],
    config: TrainConfig,
    metrics: dict[str, Any],
    history: list[dict[str, Any]],
    dataset: dict[str, Any],
) -> Path:
    """The version directory around the model files ``write_models(tmp)`` writes (and
    checks; it returns their entries for ``metadata.json``), put in place atomically."""
    if out_dir.exists():
        raise FileExistsError(f"The version directory {out_dir} already exists.")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        models = write_models(tmp)
        _write_bytes(tmp / LABELS, _to_json(list(class_names)))
        files = {
            name: {"sha256": sha256_file(tmp / name), "bytes": (tmp / name).stat().st_size}
            for name in (MODEL_KERAS, MODEL_TFLITE, LABELS)
        }
        meta = {
            "format_version": FORMAT_VERSION,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "class_names": list(class_names),
            "image_size": image_size,
            "input": {
                "shape": [image_size, image_size, 3],
                "dtype": "float32",
                "range": [0, 255],
                "resize": RESIZE_TF,
            },
            "config": config.to_dict(),
            "metrics": metrics,
            "history": history,
            "dataset": dataset,
            "libraries": library_versions(),
            **models,
            "files": files,
        }
        _write_bytes(tmp / METADATA, _to_json(meta))
        _fsync_dir(tmp)
        if out_dir.exists():
            raise FileExistsError(f"The version directory {out_dir} already exists.")
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(out_dir.parent)
    return out_dir


def library_versions() -> dict[str, str]:
    """Versions of everything that decides what a version computes, for ``metadata.json``."""
    versions = {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
    }
    for name, dist in (("pillow", "pillow"), ("ai-edge-litert", "ai-edge-litert")):
        try:
            versions[name] = importlib_metadata.version(dist)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = "unknown"
    return versions


def convert_to_tflite(model: keras.Model) -> bytes:
    """Return a float32 TFLite flatbuffer computing ``model(x, training=False)``.

    Works for any single-input Keras 3 model with a known input shape (the whole classifier
    or a bare trunk+pooling feature extractor). The batch dimension stays dynamic, so LiteRT
    can ``resize_tensor_input`` to any batch size.

    Why not ``model.export(format="litert")``: it writes a SavedModel and converts that,
    which takes ~16 s for MobileNetV2 @224 on two cores. Tracing one concrete function and
    freezing its variables into constants converts the same graph, with identical outputs,
    in ~4.5 s; this runs at the end of every training job, so it matters.
    """
    spec = _input_spec(model)
    try:
        converter = _frozen_converter(model, spec)
    except ImportError:  # A TensorFlow that moved its private API: take the slow, public road.
        return _convert_via_saved_model(model, spec)
    return converter.convert()


INT8_ALL_LAYERS = "all layers"
INT8_FIRST_DEPTHWISE_FLOAT = "all but the first depthwise convolution"


def quantize_to_int8(
    model: keras.Model, calibration: Callable[[], Iterator[np.ndarray]]
) -> dict[str, bytes]:
    """Full-integer copies of ``model``, calibrated once on ``calibration``'s photos.

    ``calibration`` returns an iterator over ``(1, S, S, 3)`` float32 0-255 batches of
    representative photos. Weights and activations become int8 while input and output stay
    float32, so callers feed the same pixels and read the same probabilities (see
    ``classifier.quantize``, which keeps whichever copy agrees best with float32).

    Two copies, by which layers are quantized (the keys): :data:`INT8_ALL_LAYERS`, and
    :data:`INT8_FIRST_DEPTHWISE_FLOAT`, which leaves MobileNetV2's first depthwise
    convolution (32 channels at half the input size) in float32, its input dequantized and
    its output quantized again. That layer is the trunk's worst quantized by far
    (``QuantizationDebugger``: 1.3 quantization steps RMSE against 0.4-0.8 for the next
    worst, alpha 1.0 @224). Keeping it in float32 raised top-1 agreement with float32 on
    five alpha 1.0 @224 versions from 0.947-0.970 to 0.966-0.984, at no measurable cost in
    speed, but lowered it on an alpha 0.35 @128 one (0.944 to 0.921): hence both, and a
    choice on each version's own photos. Only the first copy is made where TensorFlow lacks
    the converter's two-step API (calibrate, then ``mlir_quantize`` with a deny list).

    A quantized model takes one photo per call (a fixed batch of 1; ``LiteRTRunner`` runs
    larger batches photo by photo): with a dynamic batch and per-channel int8 weights,
    XNNPACK in ai-edge-litert 1.x aborts the process (``double free``) when it prepares
    some small models, which no caller could catch; one photo per call is also XNNPACK's
    fastest way through MobileNetV2.
    """
    converter = _frozen_converter(model, _input_spec(model, batch=1))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([batch] for batch in calibration())
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    try:
        from tensorflow.lite.python import schema_py_generated as schema
        from tensorflow.lite.python.convert import mlir_quantize
        from tensorflow.lite.tools import flatbuffer_utils

        converter._experimental_calibrate_only = True  # noqa: SLF001 - see above
    except (ImportError, AttributeError):
        return {INT8_ALL_LAYERS: converter.convert()}
    calibrated = converter.convert()

    def quantize(keep_float: list[str]) -> bytes:
        return mlir_quantize(
            calibrated,
            converter._experimental_disable_per_channel,  # noqa: SLF001
            input_data_type=tf.float32,
            output_data_type=tf.float32,
            denylisted_nodes=keep_float,
        )

    copies = {INT8_ALL_LAYERS: quantize([])}
    calibrated_model = flatbuffer_utils.read_model_from_bytearray(bytearray(calibrated))
    wanted = schema.BuiltinOperator.DEPTHWISE_CONV_2D
    depthwise = {
        index
        for index, code in enumerate(calibrated_model.operatorCodes)
        if max(code.builtinCode, code.deprecatedBuiltinCode) == wanted
    }
    graph = calibrated_model.subgraphs[0]
    first = next((op for op in graph.operators if op.opcodeIndex in depthwise), None)
    if first is not None:
        name = graph.tensors[first.outputs[0]].name.decode()
        copies[INT8_FIRST_DEPTHWISE_FLOAT] = quantize([name])
    return copies


def _frozen_converter(model: keras.Model, spec: tf.TensorSpec) -> tf.lite.TFLiteConverter:
    """A builtin-ops converter for ``model`` traced once, its variables frozen to constants.

    Raises:
        ImportError: this TensorFlow moved the private freezing API.
    """
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    function = tf.function(lambda x: model(x, training=False), input_signature=[spec])
    frozen = convert_variables_to_constants_v2(function.get_concrete_function())
    converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter


def graft_tflite(trunk_tflite: bytes, head: keras.Model) -> bytes:
    """Return one flatbuffer computing ``head(trunk(x))`` from the trunk's converted flatbuffer.

    A job whose trunk stayed frozen trained only the head; the trunk is the very one the
    feature cache already converted (``features.trunk_tflite``). Converting the whole
    classifier again costs ~5 s of tracing and MLIR passes, most of the time of a job that
    hit the feature cache; converting the head alone (~0.5 s) and splicing its operators
    after the trunk's output gives the same graph. The result is checked against Keras like
    any conversion (``export_version``), so a splice that went wrong can never be shipped.

    The head's input tensor is replaced by the trunk's output tensor; its buffers, tensors,
    operators and operator codes are appended with their indices shifted.

    Raises:
        ArtifactError: the two flatbuffers cannot be joined (more than one subgraph or
            input/output, signatures, or a feature shape mismatch).
    """
    from tensorflow.lite.tools import flatbuffer_utils

    trunk = flatbuffer_utils.read_model_from_bytearray(bytearray(trunk_tflite))
    tail = _dense_head_model(head)
    if tail is None:  # a head of other layers: let the converter write it
        tail = flatbuffer_utils.read_model_from_bytearray(bytearray(convert_to_tflite(head)))
    if len(trunk.subgraphs) != 1 or len(tail.subgraphs) != 1:
        raise ArtifactError("Only single-subgraph models can be grafted.")
    if trunk.signatureDefs or tail.signatureDefs:
        raise ArtifactError("Models with signature definitions cannot be grafted.")
    body, top = trunk.subgraphs[0], tail.subgraphs[0]
    if len(body.outputs) != 1 or len(top.inputs) != 1 or len(top.outputs) != 1:
        raise ArtifactError("The trunk needs one output and the head one input and output.")
    joint = int(body.outputs[0])
    head_input = int(top.inputs[0])
    features, expected = body.tensors[joint], top.tensors[head_input]
    if list(features.shapeSignature) != list(expected.shapeSignature) or (
        features.type != expected.type
    ):
        raise ArtifactError(
            f"The trunk's output {list(features.shapeSignature)} does not fit the head's "
            f"input {list(expected.shapeSignature)}."
        )
    features.name = b"features"

    buffer_base = len(trunk.buffers)
    trunk.buffers.extend(tail.buffers)
    codes = {}
    for index, code in enumerate(tail.operatorCodes):
        key = (code.builtinCode, code.deprecatedBuiltinCode, code.version, code.customCode)
        for known, existing in enumerate(trunk.operatorCodes):
            if key == (
                existing.builtinCode,
                existing.deprecatedBuiltinCode,
                existing.version,
                existing.customCode,
            ):
                codes[index] = known
                break
        else:
            codes[index] = len(trunk.operatorCodes)
            trunk.operatorCodes.append(code)
    tensors = {head_input: joint}
    for index, tensor in enumerate(top.tensors):
        if index == head_input:
            continue
        tensor.buffer = buffer_base + tensor.buffer if tensor.buffer else 0
        tensors[index] = len(body.tensors)
        body.tensors.append(tensor)

    def remap(indices: Any) -> list[int]:
        return [] if indices is None else [tensors[int(i)] if i >= 0 else -1 for i in indices]

    for operator in top.operators:
        operator.opcodeIndex = codes[operator.opcodeIndex]
        operator.inputs = remap(operator.inputs)
        operator.outputs = remap(operator.outputs)
        operator.intermediates = remap(operator.intermediates)
        body.operators.append(operator)
    body.outputs = [tensors[int(top.outputs[0])]]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(trunk))


def _dense_head_model(head: keras.Model) -> Any:
    """The head as a TFLite model object, written directly; None if it is not a Dense stack.

    A head of Dense layers (ReLU or linear, the last one softmax or linear) and Dropout
    (nothing at inference) is a chain of FULLY_CONNECTED operators and a SOFTMAX, which is
    what the converter makes of it (~0.5-0.8 s of tracing and MLIR passes per job). Writing
    them straight from the weights takes milliseconds; the grafted model is then checked
    against Keras like any conversion.
    """
    from tensorflow.lite.python import schema_py_generated as schema

    fused = {
        "relu": schema.ActivationFunctionType.RELU,
        "linear": schema.ActivationFunctionType.NONE,
    }
    layers = [layer for layer in head.layers if not isinstance(layer, keras.layers.InputLayer)]
    dense = [layer for layer in layers if not isinstance(layer, keras.layers.Dropout)]
    if not dense or not all(isinstance(layer, keras.layers.Dense) for layer in dense):
        return None
    activations = [layer.activation.__name__ for layer in dense]
    if any(a not in fused for a in activations[:-1]) or activations[-1] not in (
        *fused,
        "softmax",
    ):
        return None

    model = schema.ModelT()
    model.version = 3
    model.buffers = [schema.BufferT()]
    graph = schema.SubGraphT()
    graph.tensors, graph.operators = [], []
    model.subgraphs = [graph]
    model.operatorCodes = []
    codes: dict[int, int] = {}

    def opcode(builtin: int) -> int:
        if builtin not in codes:
            code = schema.OperatorCodeT()
            code.builtinCode = code.deprecatedBuiltinCode = builtin
            code.version = 1
            codes[builtin] = len(model.operatorCodes)
            model.operatorCodes.append(code)
        return codes[builtin]

    def tensor(name: str, shape: tuple[int, ...], data: np.ndarray | None = None) -> int:
        entry = schema.TensorT()
        entry.name = name.encode()
        entry.type = schema.TensorType.FLOAT32
        entry.quantization = schema.QuantizationParametersT()
        entry.shape = np.array(shape, dtype=np.int32)
        if data is None:  # an activation: any batch size
            entry.shapeSignature = np.array((-1, *shape[1:]), dtype=np.int32)
            entry.buffer = 0
        else:
            buffer = schema.BufferT()
            buffer.data = np.frombuffer(np.ascontiguousarray(data, "<f4").tobytes(), np.uint8)
            entry.buffer = len(model.buffers)
            model.buffers.append(buffer)
        graph.tensors.append(entry)
        return len(graph.tensors) - 1

    def operator(builtin: int, inputs: list[int], output: int, options: Any, kind: int) -> None:
        op = schema.OperatorT()
        op.opcodeIndex = opcode(builtin)
        op.inputs = np.array(inputs, dtype=np.int32)
        op.outputs = np.array([output], dtype=np.int32)
        op.builtinOptionsType, op.builtinOptions = kind, options
        graph.operators.append(op)

    x = tensor("features", (1, int(dense[0].kernel.shape[0])))
    graph.inputs = np.array([x], dtype=np.int32)
    for layer, activation in zip(dense, activations, strict=True):
        kernel = np.asarray(layer.kernel.numpy(), dtype=np.float32)
        units = kernel.shape[1]
        weights = tensor(f"{layer.name}/kernel", (units, kernel.shape[0]), kernel.T)
        inputs = [x, weights]
        inputs.append(
            tensor(f"{layer.name}/bias", (units,), np.asarray(layer.bias.numpy(), np.float32))
            if layer.use_bias
            else -1
        )
        options = schema.FullyConnectedOptionsT()
        options.fusedActivationFunction = fused.get(activation, fused["linear"])
        x_next = tensor(f"{layer.name}/output", (1, units))
        kind = schema.BuiltinOptions.FullyConnectedOptions
        operator(schema.BuiltinOperator.FULLY_CONNECTED, inputs, x_next, options, kind)
        x = x_next
        if activation == "softmax":
            softmax = schema.SoftmaxOptionsT()
            softmax.beta = 1.0
            probabilities = tensor(f"{layer.name}/softmax", (1, units))
            kind = schema.BuiltinOptions.SoftmaxOptions
            operator(schema.BuiltinOperator.SOFTMAX, [x], probabilities, softmax, kind)
            x = probabilities
    graph.outputs = np.array([x], dtype=np.int32)
    return model


def _check_agreement(model: keras.Model, tflite: bytes, image_size: int) -> float:
    pixels = _check_pixels(image_size)
    expected = np.asarray(model(pixels, training=False))
    return _agreement(expected, LiteRTRunner(tflite).run(pixels))


def _check_graft(head: keras.Model, trunk_tflite: bytes, tflite: bytes, image_size: int) -> float:
    pixels = _check_pixels(image_size)
    features = LiteRTRunner(trunk_tflite).run(pixels)
    expected = np.asarray(head(features, training=False))
    return _agreement(expected, LiteRTRunner(tflite).run(pixels))


def _check_pixels(image_size: int) -> np.ndarray:
    pixels = np.random.default_rng(0).integers(0, 256, (2, image_size, image_size, 3))
    return pixels.astype(np.float32)


def _agreement(expected: np.ndarray, got: np.ndarray) -> float:
    max_diff = float(np.max(np.abs(expected - got)))
    if not max_diff <= AGREEMENT_TOLERANCE:
        raise ArtifactError(
            f"The converted TFLite model disagrees with Keras (max difference {max_diff:.2g})."
        )
    return max_diff


def _to_json(value: Any) -> bytes:
    return (json.dumps(_plain(value), indent=2, allow_nan=False) + "\n").encode()


def _plain(value: Any) -> Any:
    """Make ``value`` strict JSON: numpy scalars/arrays, paths, tuples; NaN/inf -> None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return value.as_posix()
    return value


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _input_spec(model: keras.Model, batch: int | None = None) -> tf.TensorSpec:
    inputs = getattr(model, "inputs", None)
    if not inputs or len(inputs) != 1:
        raise ValueError("convert_to_tflite needs a built model with exactly one input.")
    shape = tuple(inputs[0].shape)
    if any(dim is None for dim in shape[1:]):
        raise ValueError(f"convert_to_tflite needs a fixed image size; the input is {shape}.")
    return tf.TensorSpec((batch, *shape[1:]), tf.float32, name="images")


def _convert_via_saved_model(model: keras.Model, spec: tf.TensorSpec) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.tflite")
        model.export(path, format="litert", verbose=False, input_signature=[spec])
        return Path(path).read_bytes()


def remove_stale_temporaries(parent: str | Path, older_than_seconds: float) -> list[Path]:
    """Remove the ``.<name>.tmp-*`` folders that :func:`export_version` left in ``parent``.

    A process killed while exporting (a worker child hit by SIGKILL or the OOM killer)
    never reaches the ``except`` that removes its temporary folder, and nothing else ever
    would. Only folders named like those temporaries whose modification time is more than
    ``older_than_seconds`` ago are removed: an export still writing in another process
    keeps its folder (choose a threshold far above the longest export), and a version
    directory, which never starts with a dot, is never touched. Links are not followed. A
    missing ``parent`` holds nothing stale.

    Returns the folders removed.
    """
    import time

    cutoff = time.time() - older_than_seconds
    try:
        entries = list(os.scandir(parent))
    except FileNotFoundError:
        return []
    removed: list[Path] = []
    for entry in entries:
        if not (entry.name.startswith(".") and ".tmp-" in entry.name[1:]):
            continue
        try:
            if not entry.is_dir(follow_symlinks=False):
                continue
            if entry.stat(follow_symlinks=False).st_mtime > cutoff:
                continue
            shutil.rmtree(entry.path)
        except FileNotFoundError:  # renamed into place or removed by someone else meanwhile
            continue
        removed.append(Path(entry.path))
    return removed
