"""Streaming input pipelines: photos on disk -> batches of raw 0-255 pixels.

The recipe feeds the model with ``keras.utils.image_dataset_from_directory``. Graft does not,
because its decoding must match serving exactly: TensorFlow's decoders ignore EXIF
orientation and treat CMYK, palette and alpha images differently from the serving side.
Every photo is read by ``classifier.images.load_image`` (the one decoding path, also used
by ``classifier.serving``), called in parallel from ``tf.data`` through
``tf.numpy_function``. Only the list of paths is held in memory; images are decoded
batch by batch and prefetched, so memory does not grow with the dataset.

:func:`make_dataset` is for Keras ``fit`` (optionally shuffled and augmented);
:func:`iter_batches` is a TensorFlow-free producer used by the feature extractor, which
also reports unreadable photos instead of failing.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from classifier.errors import DatasetError, InvalidImageError
from classifier.images import load_image

AUTOTUNE = tf.data.AUTOTUNE


def make_dataset(
    root: str | Path,
    items: list[tuple[str, int]],
    *,
    image_size: int,
    batch_size: int,
    shuffle: bool = False,
    augment: bool = False,
    seed: int = 1337,
    failures: list[tuple[str, str]] | None = None,
) -> tf.data.Dataset:
    """A ``tf.data`` pipeline of ``(float32 pixels (B, S, S, 3), int32 labels (B,))``.

    paths -> (shuffle) -> parallel ``load_image`` -> batch -> (augment) -> prefetch.
    ``shuffle`` reshuffles the path list every epoch from ``seed``; ``augment`` applies a
    random horizontal flip and a small rotation and zoom (training only).

    A photo that cannot be read (changed or removed since the dataset was scanned) stops
    the pipeline with a TensorFlow error; its ``(relative path, reason)`` is first
    appended to ``failures`` when given, so the caller can say which photo it was.
    """
    root = Path(root)
    paths = [str(root / relpath) for relpath, _ in items]
    labels = np.array([label for _, label in items], dtype=np.int32)
    dataset = tf.data.Dataset.from_tensor_slices((paths, labels))
    if shuffle:
        dataset = dataset.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.map(_loader(image_size, root, failures), num_parallel_calls=AUTOTUNE)
    dataset = dataset.batch(batch_size)
    if augment:
        augmenter = make_augmenter(seed)
        dataset = dataset.map(
            lambda x, y: (augmenter(x, training=True), y), num_parallel_calls=AUTOTUNE
        )
    return dataset.prefetch(AUTOTUNE)


@contextmanager
def reading_photos(failures: list[tuple[str, str]]) -> Iterator[None]:
    """Turn the TensorFlow error raised for a photo that could not be read (recorded in
    ``failures`` by :func:`make_dataset`) into a DatasetError naming the photo."""
    try:
        yield
    except tf.errors.OpError:
        if not failures:
            raise
        relpath, reason = failures[0]
        raise DatasetError(
            f"The photo {relpath} could not be read during training ({reason}): it was "
            "changed or removed after the job started. Nothing was saved; put it back or "
            "start a new job, which scans the photos again."
        ) from None


def make_augmenter(seed: int = 1337) -> keras.Sequential:
    """Random flip, rotation (±5 % of a turn) and zoom (±10 %) for training batches."""
    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal", seed=seed),
            keras.layers.RandomRotation(0.05, fill_mode="reflect", seed=seed + 1),
            keras.layers.RandomZoom(0.1, fill_mode="reflect", seed=seed + 2),
        ],
        name="augment",
    )


def _loader(image_size: int, root: Path, failures: list[tuple[str, str]] | None):
    def load(path: np.ndarray) -> np.ndarray:
        try:
            return load_image(path.decode(), image_size)
        except (InvalidImageError, OSError) as exc:
            if failures is not None:  # list.append is atomic: loads run in parallel
                relpath = os.path.relpath(path.decode(), root)
                failures.append((relpath, str(exc) or type(exc).__name__))
            raise

    def map_fn(path: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        pixels = tf.numpy_function(load, [path], tf.uint8, stateful=False)
        pixels.set_shape((image_size, image_size, 3))
        return tf.cast(pixels, tf.float32), label

    return map_fn


@dataclass
class Batch:
    """A batch from :func:`iter_batches`: ``pixels`` hold the readable photos of ``indices``."""

    indices: list[int]
    pixels: np.ndarray
    failures: list[tuple[int, str]]


def iter_batches(
    root: str | Path,
    relpaths: list[str],
    *,
    image_size: int,
    batch_size: int,
    workers: int | None = None,
    ahead: int = 2,
) -> Iterator[Batch]:
    """Decode ``relpaths`` in order with a thread pool, yielding uint8 batches.

    Pillow releases the GIL while decoding, so threads overlap decoding with whatever the
    consumer runs (LiteRT inference). At most ``ahead`` batches are decoded in advance, so
    memory stays flat. Unreadable photos are reported in ``Batch.failures`` (position in
    ``relpaths``, reason) and left out of ``pixels``.
    """
    root = Path(root)
    workers = workers or max(2, os.cpu_count() or 2)

    def read(index: int) -> tuple[int, np.ndarray | None, str | None]:
        try:
            return index, load_image(root / relpaths[index], image_size), None
        except InvalidImageError as exc:
            return index, None, str(exc)
        except OSError as exc:
            return index, None, f"The file could not be read: {exc}"

    starts = range(0, len(relpaths), batch_size)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque[list[Future]] = deque()
        for start in starts:
            pending.append(
                [pool.submit(read, i) for i in range(start, min(start + batch_size, len(relpaths)))]
            )
            if len(pending) > ahead:
                yield _collect(pending.popleft(), image_size)
        while pending:
            yield _collect(pending.popleft(), image_size)


def _collect(futures: list[Future], image_size: int) -> Batch:
    indices: list[int] = []
    arrays: list[np.ndarray] = []
    failures: list[tuple[int, str]] = []
    for future in futures:
        index, array, problem = future.result()
        if array is None:
            failures.append((index, problem or "unreadable"))
        else:
            indices.append(index)
            arrays.append(array)
    pixels = (
        np.stack(arrays) if arrays else np.zeros((0, image_size, image_size, 3), dtype=np.uint8)
    )
    return Batch(indices=indices, pixels=pixels, failures=failures)
