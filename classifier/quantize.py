"""An int8 copy of a model version, checked on the version's own photos before it may serve.

Full-integer post-training quantization (int8 weights and activations, float32 input and
output) makes MobileNetV2 about 1.5-2x faster per photo under LiteRT/XNNPACK on CPUs with
int8 dot products, and the model file 2x smaller. It may also change answers, so it is
never silent: :func:`quantize_version` calibrates the activation ranges on a seeded sample
of the version's training photos, makes the int8 copies of ``export.quantize_to_int8`` (all
layers quantized, or all but the first depthwise convolution), classifies the version's
validation photos with each and with float32, keeps the copy whose answers agree most
with float32's, and records float32 and int8 accuracy, their top-1 agreement, which layers
are int8 (``int8_layers``) and every copy's figures (``candidates``) in ``metadata.json``
(``int8``). The int8 model is written (``model.int8.tflite``, with its checksum) only when
its accuracy is within ``max_accuracy_drop`` of the float32 model's; serving uses it only
when asked to (``Predictor.load(prefer_int8=True)``) and the record says it was accepted.
``model.tflite`` and every other file of the version stay as they were.

Calibrated conversion takes ~10-20 s for MobileNetV2 @224, which is why it is a separate
step (a background task in the web app, ``python -m classifier quantize`` on the command
line) and not part of every training job. This module imports TensorFlow.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np

from classifier.errors import ArtifactError, DatasetError, InvalidImageError
from classifier.files import atomic_write, locked, quantize_lock_path
from classifier.serving import (
    METADATA,
    MODEL_INT8,
    MODEL_KERAS,
    Predictor,
    int8_record,
    sha256_file,
)

CALIBRATION_IMAGES = 100
VALIDATION_IMAGES = 300
MAX_ACCURACY_DROP = 0.01
SEED = 0
CHILD_TIMEOUT_S = 600


def quantize_version(
    version_dir: str | Path,
    data_dir: str | Path,
    *,
    calibration_images: int = CALIBRATION_IMAGES,
    validation_images: int = VALIDATION_IMAGES,
    max_accuracy_drop: float = MAX_ACCURACY_DROP,
    force: bool = False,
) -> dict[str, Any]:
    """Quantize ``version_dir``'s model to int8, check it, and record the result.

    Calibration uses up to ``calibration_images`` of the version's training photos
    (``metadata.json`` ``dataset.train_files``, read from ``data_dir``), chosen with a
    fixed seed; the check uses up to ``validation_images`` of its validation photos (or,
    for a version trained without a validation split, training photos not used for
    calibration). Photos that are gone or unreadable are skipped and counted.

    Returns the record stored under ``metadata.json`` ``int8``: ``accepted``, ``file``
    (``model.int8.tflite`` or None), ``float32_accuracy``, ``int8_accuracy``,
    ``agreement`` (share of photos with the same top-1 class), ``int8_layers`` (which of
    ``export.quantize_to_int8``'s copies was kept), ``candidates`` (each copy's
    ``layers``, ``int8_accuracy`` and ``agreement``, or its ``failure``), ``calibration_images``,
    ``validation_images``, ``skipped_images``, ``max_accuracy_drop``, ``sha256`` and
    ``bytes`` of the int8 file when accepted, ``seconds``, ``created_at`` and ``reason``
    (a sentence saying why it was or was not accepted). A version that already has a
    record is left alone and its record returned, unless ``force``. Versions are
    quantized one at a time (a lock beside the version), so a duplicate request waits and
    then finds the record.

    Raises:
        ArtifactError: the version is damaged or has no ``model.keras``.
        DatasetError: none of the version's photos can be read from ``data_dir``.
    """
    version_dir = Path(version_dir)
    with _locked(version_dir):
        float_predictor = Predictor.load(version_dir)  # verifies every checksum
        metadata = float_predictor.metadata
        existing = int8_record(metadata)
        if existing is not None and not force:
            return existing
        started = time.perf_counter()
        calibration, validation = _choose_photos(metadata, calibration_images, validation_images)
        skipped: list[str] = []
        calibration_pixels = _load_all(float_predictor, Path(data_dir), calibration, skipped)
        validation_pixels = _load_all(float_predictor, Path(data_dir), validation, skipped)
        if not calibration_pixels or not validation_pixels:
            raise DatasetError(
                f"None of version {version_dir.name}'s "
                f"{'training' if not calibration_pixels else 'validation'} photos could be "
                f"read from {data_dir}; quantization needs the photos it was trained on."
            )
        copies = _convert(version_dir, [pixels for pixels, _ in calibration_pixels])
        content, measured = _measure(copies, float_predictor, validation_pixels, max_accuracy_drop)
        record = {
            **measured,
            "calibration_images": len(calibration_pixels),
            "validation_images": len(validation_pixels),
            "skipped_images": len(skipped),
            "max_accuracy_drop": max_accuracy_drop,
        }
        accepted = record["accepted"]
        files = dict(metadata["files"])
        files.pop(MODEL_INT8, None)
        if accepted:
            _write(version_dir / MODEL_INT8, content)
            digest = sha256_file(version_dir / MODEL_INT8)
            files[MODEL_INT8] = {"sha256": digest, "bytes": len(content)}
            record.update(sha256=digest, bytes=len(content))
        record["seconds"] = round(time.perf_counter() - started, 3)
        record["created_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        updated = {**metadata, "files": files, "int8": record}
        _write(
            version_dir / METADATA, (json.dumps(updated, indent=2, allow_nan=False) + "\n").encode()
        )
        if not accepted:
            (version_dir / MODEL_INT8).unlink(missing_ok=True)
        return record


def _measure(
    copies: dict[str, bytes],
    float_predictor: Predictor,
    validation: list[tuple[np.ndarray, int]],
    max_accuracy_drop: float,
) -> tuple[bytes, dict[str, Any]]:
    """Run every int8 copy on the validation photos, keep the one that agrees best with
    float32 (then the more accurate, then the first), and judge it: (its bytes, record)."""
    batch = np.stack([pixels for pixels, _ in validation])
    truth = np.array([label for _, label in validation])
    float_top = np.argmax(_run(float_predictor.predict_array, batch), axis=1)
    float_accuracy = float(np.mean(float_top == truth))
    candidates: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    chosen = b""
    for layers, content in copies.items():
        int8_probs, failure = _run_in_child(content, batch)
        if int8_probs is None:
            candidates.append({"layers": layers, "failure": failure})
            continue
        int8_top = np.argmax(int8_probs, axis=1)
        measured = {
            "layers": layers,
            "int8_accuracy": float(np.mean(int8_top == truth)),
            "agreement": float(np.mean(float_top == int8_top)),
        }
        candidates.append(measured)
        if best is None or _rank(measured) > _rank(best):  # a tie keeps the earlier copy
            best, chosen = measured, content
    if best is None:
        return b"", {
            "accepted": False,
            "file": None,
            "float32_accuracy": float_accuracy,
            "int8_accuracy": None,
            "agreement": None,
            "int8_layers": None,
            "candidates": candidates,
            "reason": f"Not accepted: LiteRT could not run the int8 model "
            f"({candidates[0]['failure']}); the float32 model keeps serving.",
        }
    int8_accuracy = best["int8_accuracy"]
    accepted = int8_accuracy >= float_accuracy - max_accuracy_drop - 1e-12
    return chosen, {
        "accepted": bool(accepted),
        "file": MODEL_INT8 if accepted else None,
        "float32_accuracy": float_accuracy,
        "int8_accuracy": int8_accuracy,
        "agreement": best["agreement"],
        "int8_layers": best["layers"],
        "candidates": candidates,
        "reason": _reason(accepted, float_accuracy, int8_accuracy, max_accuracy_drop),
    }


_rank = itemgetter("agreement", "int8_accuracy")


def _choose_photos(
    metadata: dict[str, Any], calibration_images: int, validation_images: int
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    dataset = metadata.get("dataset") if isinstance(metadata.get("dataset"), dict) else {}
    train = [(str(path), int(label)) for path, label in dataset.get("train_files") or []]
    val = [(str(path), int(label)) for path, label in dataset.get("val_files") or []]
    if not train:
        raise DatasetError(
            "The version does not list the photos it was trained on (metadata.json "
            "dataset.train_files); it cannot be calibrated."
        )
    rng = np.random.default_rng(SEED)
    order = rng.permutation(len(train))
    calibration = [train[i] for i in order[: max(1, calibration_images)]]
    if not val:  # trained without a validation split: check on photos not calibrated on
        val = [train[i] for i in order[max(1, calibration_images) :]]
    if len(val) > validation_images:
        val = [val[i] for i in sorted(rng.choice(len(val), validation_images, replace=False))]
    return calibration, val


def _load_all(
    predictor: Predictor, root: Path, items: list[tuple[str, int]], skipped: list[str]
) -> list[tuple[np.ndarray, int]]:
    loaded = []
    for relpath, label in items:
        try:
            loaded.append((predictor.load_pixels(root / relpath), label))
        except (InvalidImageError, OSError):
            skipped.append(relpath)
    return loaded


def _convert(version_dir: Path, calibration: list[np.ndarray]) -> dict[str, bytes]:
    import keras

    from classifier.export import quantize_to_int8

    try:
        model = keras.saving.load_model(version_dir / MODEL_KERAS, compile=False)
    except Exception as exc:
        raise ArtifactError(f"{version_dir / MODEL_KERAS} cannot be loaded: {exc}") from None

    def photos() -> Iterator[np.ndarray]:
        for pixels in calibration:
            yield pixels[np.newaxis].astype(np.float32)

    with warnings.catch_warnings():
        # The converter wants input statistics for a quantized input; ours stays float32.
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        return quantize_to_int8(model, photos)


def _run(predict: Any, batch: np.ndarray) -> np.ndarray:
    return np.concatenate([predict(batch[i : i + 32]) for i in range(0, len(batch), 32)])


# Runs the int8 model where a crash cannot take the caller down (see _run_in_child).
_CHILD = """
import sys
import numpy as np
from classifier.serving import LiteRTRunner
runner = LiteRTRunner(open(sys.argv[1], "rb").read())
np.save(sys.argv[3], runner.run(np.load(sys.argv[2])))
"""


def _run_in_child(content: bytes, batch: np.ndarray) -> tuple[np.ndarray | None, str]:
    """The int8 model's probabilities for ``batch``, computed in a child process.

    XNNPACK has aborted the whole process (``double free``) while preparing some int8
    models calibrated on near-uniform photos; in a worker or a web process that is a crash
    no ``except`` can catch. The model is therefore first run here, in a throwaway
    process, by the same LiteRT and CPU that will serve it; one that does not run is
    recorded as not accepted and never reaches a web process.
    """
    with tempfile.TemporaryDirectory(prefix="graft-int8-") as tmp:
        model, pixels, output = (Path(tmp) / name for name in ("m.tflite", "x.npy", "y.npy"))
        model.write_bytes(content)
        np.save(pixels, batch)
        package_root = str(Path(__file__).resolve().parents[1])
        path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
        try:
            child = subprocess.run(
                [sys.executable, "-c", _CHILD, str(model), str(pixels), str(output)],
                env={**os.environ, "PYTHONPATH": path},
                capture_output=True,
                timeout=CHILD_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            return None, f"no answer in {CHILD_TIMEOUT_S} s"
        if child.returncode != 0:
            if child.returncode < 0:
                return None, f"it crashed with {signal.Signals(-child.returncode).name}"
            last = child.stderr.decode(errors="replace").strip().splitlines()[-1:]
            return None, f"exit status {child.returncode}: {last[0] if last else 'no message'}"
        return np.load(output), ""


def _reason(accepted: bool, float_accuracy: float, int8_accuracy: float, drop: float) -> str:
    figures = f"int8 {int8_accuracy:.1%} against float32 {float_accuracy:.1%}"
    if accepted:
        return f"Accepted: {figures} on the validation photos (allowed drop {drop:.1%})."
    return (
        f"Not accepted: {figures} on the validation photos, more than the allowed "
        f"{drop:.1%} drop; the float32 model keeps serving."
    )


def _write(path: Path, content: bytes) -> None:
    """Replace ``path`` in one rename, with the permissions of the version's other files."""
    atomic_write(path, content, mode=(path.parent / METADATA).stat().st_mode & 0o777)


@contextmanager
def _locked(version_dir: Path) -> Iterator[None]:
    if not version_dir.is_dir():
        raise ArtifactError(f"{version_dir} is not a model version directory.")
    with locked(quantize_lock_path(version_dir)):
        yield
