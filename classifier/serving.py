"""Classifying photos with an exported model version, through LiteRT only.

The web process imports this module, so it must stay light: no TensorFlow, no Keras (a
test proves it in a subprocess). Versions are served from their ``model.tflite`` with the
``ai-edge-litert`` interpreter (XNNPACK on CPU): ~4-8 ms per 224x224 photo here, against
~20-60 ms through Keras.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from classifier import allocator
from classifier.errors import ArtifactError, InvalidImageError
from classifier.images import RESIZE_METHODS, RESIZE_PIL, RESIZE_TF, ImageSource, load_image

FORMAT_VERSION = 1
MODEL_KERAS = "model.keras"
MODEL_TFLITE = "model.tflite"
MODEL_INT8 = "model.int8.tflite"
LABELS = "labels.json"
METADATA = "metadata.json"
PREDICT_MANY_CHUNK = 32

log = logging.getLogger(__name__)


class LiteRTRunner:
    """One LiteRT interpreter behind a lock: ``run(batch) -> outputs``, safe from any thread.

    A single interpreter already uses ``num_threads`` cores for one call, so serialising
    callers costs little throughput and keeps memory to one copy of the packed weights.
    The input tensor is resized only when the batch shape changes.

    Args:
        model: the ``.tflite`` flatbuffer, or a path to it.
        num_threads: CPU threads for XNNPACK (default: all cores).
    """

    def __init__(self, model: bytes | Path | str, *, num_threads: int | None = None) -> None:
        threads = num_threads or os.cpu_count() or 1
        self._lock = threading.Lock()
        # A file is mapped, not read into memory: once XNNPACK has packed the weights, the
        # mapping's pages are released (allocator.release_file_pages) and the model costs
        # the process only its packed copy.
        self._model_path = None if isinstance(model, bytes) else Path(model)
        if self._model_path is None:
            self._interpreter = Interpreter(model_content=model, num_threads=threads)
        else:
            self._interpreter = Interpreter(model_path=str(model), num_threads=threads)
        input_detail = self._interpreter.get_input_details()[0]
        self._input_index = input_detail["index"]
        self._output_index = self._interpreter.get_output_details()[0]["index"]
        self.input_dtype = np.dtype(input_detail["dtype"])
        signature = input_detail.get("shape_signature")
        if signature is None or len(signature) == 0:
            signature = input_detail["shape"]
        self.input_shape: tuple[int, ...] = tuple(int(d) for d in signature[1:])
        output_detail = self._interpreter.get_output_details()[0]
        self.output_shape: tuple[int, ...] = tuple(int(d) for d in output_detail["shape"][1:])
        # A model made for one photo per call (int8, see export.convert_to_tflite) is never
        # resized: larger batches go through it photo by photo.
        self.one_at_a_time = int(signature[0]) == 1
        self._batch_shape: tuple[int, ...] | None = None

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Run the model on ``batch`` (N, *input_shape) and return its first output (a copy)."""
        batch = np.ascontiguousarray(batch, dtype=self.input_dtype)
        if not self._fits(batch.shape):
            raise ValueError(
                f"Expected a batch of shape (N, {', '.join(map(str, self.input_shape))}); "
                f"got {batch.shape}."
            )
        if batch.shape[0] == 0:
            return np.zeros((0, *self.output_shape), dtype=np.float32)
        if self.one_at_a_time and batch.shape[0] > 1:
            return np.concatenate([self.run(batch[i : i + 1]) for i in range(batch.shape[0])])
        with self._lock:
            reshaped = batch.shape != self._batch_shape
            if reshaped:
                self._interpreter.resize_tensor_input(self._input_index, list(batch.shape))
                self._interpreter.allocate_tensors()
                self._batch_shape = batch.shape
            self._interpreter.set_tensor(self._input_index, batch)
            self._interpreter.invoke()
            if reshaped and self._model_path is not None:
                # XNNPACK packs (some) weights on the first call after an allocation.
                allocator.release_file_pages(self._model_path)
            return self._interpreter.get_tensor(self._output_index)

    def _fits(self, shape: tuple[int, ...]) -> bool:
        if len(shape) != len(self.input_shape) + 1:
            return False
        return all(want in (-1, got) for want, got in zip(self.input_shape, shape[1:], strict=True))


class Predictor:
    """A loaded model version: photos in, top-k labels with probabilities out.

    Build it with :meth:`load`. Immutable after loading and safe to share between threads
    (the interpreter is behind :class:`LiteRTRunner`'s lock). Photos are decoded by
    :func:`classifier.images.load_image`, the same code that fed training, and resized with
    the method the version records (``resize``), so a version exported by an older Graft
    keeps being served exactly as it was trained.
    """

    def __init__(
        self,
        runner: LiteRTRunner,
        *,
        labels: list[str],
        image_size: int,
        metadata: dict[str, Any],
        version_dir: Path,
        resize: str = RESIZE_TF,
        precision: str = "float32",
    ) -> None:
        self._runner = runner
        self.precision = precision
        self.labels = list(labels)
        self.image_size = int(image_size)
        self.resize = resize
        self.metadata = metadata
        self.version_dir = version_dir

    @classmethod
    def load(
        cls,
        version_dir: str | Path,
        *,
        verify: bool = True,
        num_threads: int | None = None,
        prefer_int8: bool = False,
    ) -> Predictor:
        """Load ``version_dir`` (written by ``classifier.export.export_version``).

        With ``verify`` every file listed in ``metadata.json`` must be present with its
        recorded sha256, so a damaged or tampered version is never served. With
        ``prefer_int8`` the version's int8 model (``classifier.quantize``) answers instead
        of the float32 one, but only when its record says it was accepted (its accuracy on
        the version's validation photos stayed within the allowed drop); ``precision``
        says which one was loaded. An int8 copy that is damaged, or that LiteRT cannot
        load, is skipped with a warning and the float32 model answers.

        Raises:
            ArtifactError: a missing or unreadable file, a checksum mismatch, or labels that
                do not fit the model.
        """
        version_dir = Path(version_dir)
        metadata = _read_json(version_dir / METADATA)
        if not isinstance(metadata, dict) or not isinstance(metadata.get("files"), dict):
            raise ArtifactError(
                f"{version_dir / METADATA} is not a Graft model version's metadata."
            )
        files: dict[str, Any] = metadata["files"]
        precision = "int8" if prefer_int8 and int8_accepted(metadata) else "float32"
        if precision == "int8" and verify and not _intact(version_dir / MODEL_INT8, files):
            # The int8 copy is optional: a damaged one is never served, the version is.
            log.warning(
                "%s does not match its checksum; serving the float32 model. Quantize the "
                "version again to restore it.",
                version_dir / MODEL_INT8,
            )
            precision = "float32"
        model_file = MODEL_INT8 if precision == "int8" else MODEL_TFLITE
        model_path = version_dir / model_file
        # LiteRT maps the file itself; it must be the file that was checked.
        identity = _file_identity(model_path)
        if verify:
            unused = {MODEL_INT8} - {model_file}
            for name in sorted((set(files) | {model_file, LABELS}) - unused):
                expected = _recorded_sha256(files, name)
                if not expected:
                    raise ArtifactError(f"metadata.json records no checksum for {name}.")
                actual = sha256_file(version_dir / name)
                if actual != expected:
                    raise ArtifactError(
                        f"{version_dir / name} does not match its checksum; the version is "
                        "damaged or was modified. Re-export it."
                    )
        labels = _read_json(version_dir / LABELS)
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise ArtifactError(f"{version_dir / LABELS} must be a JSON list of class names.")
        try:
            runner = LiteRTRunner(model_path, num_threads=num_threads)
        except (ValueError, RuntimeError) as exc:
            if precision == "int8":
                # An intact int8 copy this LiteRT cannot load (one made by another LiteRT,
                # say) is skipped like a damaged one: the version is served in float32.
                log.warning(
                    "%s cannot be loaded (%s); serving the float32 model. Quantize the "
                    "version again to restore it.",
                    model_path,
                    exc,
                )
                return cls.load(version_dir, verify=verify, num_threads=num_threads)
            raise ArtifactError(f"{model_path} cannot be loaded: {exc}") from None
        if _file_identity(model_path) != identity:
            raise ArtifactError(f"{model_path} was replaced while it was loaded; load it again.")
        outputs = runner.output_shape[-1]
        if outputs != len(labels):
            raise ArtifactError(
                f"The model has {outputs} outputs but labels.json names {len(labels)} classes."
            )
        image_size = int(metadata.get("image_size") or runner.input_shape[0])
        if runner.input_shape not in ((image_size, image_size, 3), (-1, -1, 3)):
            raise ArtifactError(
                f"The model takes {runner.input_shape} images, not {image_size}x{image_size}x3."
            )
        return cls(
            runner,
            labels=labels,
            image_size=image_size,
            metadata=metadata,
            version_dir=version_dir,
            resize=_resize_method(metadata, version_dir),
            precision=precision,
        )

    def load_pixels(self, source: ImageSource) -> np.ndarray:
        """The photo as this version's ``(S, S, 3)`` uint8 input (decoded, resized its way)."""
        return load_image(source, self.image_size, resize=self.resize)

    def predict(self, source: ImageSource, top_k: int = 5) -> list[dict[str, Any]]:
        """Classify one photo (bytes, path, binary file or PIL image).

        Returns up to ``top_k`` ``{"label", "confidence"}`` dicts, most confident first.

        Raises:
            InvalidImageError: not an image, damaged, or too large (decompression bomb).
        """
        pixels = self.load_pixels(source)
        return self._top(self.predict_array(pixels[np.newaxis])[0], top_k)

    def predict_many(
        self, sources: Iterable[ImageSource], top_k: int = 5
    ) -> list[list[dict[str, Any]]]:
        """Classify several photos in batches; one result list per photo, in order.

        Raises:
            InvalidImageError: for the first photo that cannot be read, naming its position.
        """
        results: list[list[dict[str, Any]]] = []
        chunk: list[np.ndarray] = []
        for position, source in enumerate(sources):
            try:
                chunk.append(self.load_pixels(source))
            except InvalidImageError as exc:
                raise InvalidImageError(f"Image {position + 1}: {exc}") from None
            if len(chunk) == PREDICT_MANY_CHUNK:
                results.extend(self._top(p, top_k) for p in self.predict_array(np.stack(chunk)))
                chunk = []
        if chunk:
            results.extend(self._top(p, top_k) for p in self.predict_array(np.stack(chunk)))
        return results

    def predict_array(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities ``(N, classes)`` for raw 0-255 pixels ``(N, S, S, 3)`` (uint8 or float)."""
        batch = np.asarray(batch)
        expected = (self.image_size, self.image_size, 3)
        if batch.ndim != 4 or batch.shape[1:] != expected:
            raise ValueError(f"Expected pixels of shape (N, {', '.join(map(str, expected))}).")
        return self._runner.run(batch.astype(np.float32, copy=False))

    def _top(self, probs: np.ndarray, top_k: int) -> list[dict[str, Any]]:
        if top_k < 1:
            raise ValueError("top_k must be at least 1.")
        order = np.argsort(-probs, kind="stable")[:top_k]
        return [{"label": self.labels[i], "confidence": float(probs[i])} for i in order]


def _recorded_sha256(files: dict[str, Any], name: str) -> str | None:
    entry = files.get(name)
    return entry.get("sha256") if isinstance(entry, dict) else None


def _intact(path: Path, files: dict[str, Any]) -> bool:
    expected = _recorded_sha256(files, path.name)
    try:
        return bool(expected) and sha256_file(path) == expected
    except ArtifactError:  # unreadable or gone
        return False


def int8_record(metadata: dict[str, Any]) -> dict[str, Any] | None:
    """The version's int8 quantization record (``classifier.quantize``), if it has one."""
    record = metadata.get("int8")
    return record if isinstance(record, dict) else None


def int8_accepted(metadata: dict[str, Any]) -> bool:
    """Whether the version has an int8 model that may answer in place of the float32 one."""
    record = int8_record(metadata)
    return bool(record and record.get("accepted") and record.get("file") == MODEL_INT8)


def _resize_method(metadata: dict[str, Any], version_dir: Path) -> str:
    """The resize a version was trained with; versions from before it was recorded: PIL's."""
    spec = metadata.get("input")
    method = spec.get("resize", RESIZE_PIL) if isinstance(spec, dict) else RESIZE_PIL
    if method not in RESIZE_METHODS:
        raise ArtifactError(
            f"{version_dir / METADATA} asks for photos resized with {method!r}, which this "
            "Graft does not know; it was exported by a newer Graft."
        )
    return method


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise ArtifactError(f"{path} cannot be read: {exc.strerror or exc}") from None
    return digest.hexdigest()


def _file_identity(path: Path) -> tuple[int, ...]:
    """Which file is at ``path`` now (device, inode, size, modification time)."""
    try:
        stat = path.stat()
    except OSError as exc:
        raise ArtifactError(f"{path} cannot be read: {exc.strerror or exc}") from None
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ArtifactError(f"{path} cannot be read: {exc.strerror or exc}") from None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(_read_bytes(path))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON: {exc}") from None
