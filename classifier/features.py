"""The feature cache: run the frozen trunk once per photo, train the head on pooled features.

While the trunk is frozen and augmentation is off, every epoch of the recipe pushes every
photo through the same MobileNetV2 again and gets the same pooled features. Graft runs the
trunk once per photo and keeps the pooled features on disk, keyed by what decides them:

* the photo's content (sha256 of its bytes, so renamed or re-uploaded copies hit and an
  edited photo misses; a grown dataset only extracts its new photos),
* the backbone, alpha and image size, and the weights' identity (sha256 of the weights
  file, or ``none`` + seed for random weights).

Layout: ``<cache_dir>/features/<key>/shard-*.npz`` (content hashes, features, and photos
that could not be decoded with the reason) and ``<cache_dir>/trunks/<key>.tflite`` (the
trunk converted for LiteRT, which extracts ~2x faster than TensorFlow's own graph on CPU).
Beside them, ``<cache_dir>/models/`` keeps ``model.keras`` templates (``classifier.assemble``)
so a later job on a cached trunk need not build the full model to export it.
Files are written to a temporary name and ``os.replace``-d into place, and extraction holds
an exclusive ``fcntl.flock`` on the key, so two jobs on the same data share one extraction
safely: the second waits, then finds everything cached.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from classifier.config import TrainConfig
from classifier.files import atomic_file, atomic_write, locked
from classifier.model import BACKBONE, weights_identity
from classifier.pipeline import Batch, iter_batches

log = logging.getLogger(__name__)

# 2: photos resized like tf.image.resize (images.resize_like_tensorflow), not Image.resize.
# 3: that resize computed in float32 and rounded (within 0.5 of tf.image.resize, was 1).
CACHE_FORMAT = 3
EXTRACT_BATCH = 32
INFER_BATCH = 1  # photos per LiteRT call while extracting (see _ParallelTrunk)

Progress = Callable[[int, int], None]


@dataclass
class FeatureSet:
    """Features for the requested photos, in request order, minus the unreadable ones.

    ``kept`` are the positions (in the request) that have a row in ``features``;
    ``failures`` are ``(position, reason)`` for photos that could not be decoded.
    """

    features: np.ndarray
    kept: list[int]
    failures: list[tuple[int, str]]
    cache_hit: bool
    extracted: int
    seconds: float
    engine: str = "cache"
    key: str = ""
    stats: dict[str, float] = field(default_factory=dict)


def cache_key(config: TrainConfig) -> str:
    """What decides a trunk's features, as a short hex digest."""
    identity = {
        "format": CACHE_FORMAT,
        "backbone": BACKBONE,
        "alpha": float(config.alpha),
        "image_size": int(config.image_size),
        "weights": weights_identity(config),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]


def extract_features(
    root: str | Path,
    relpaths: list[str],
    content_hashes: list[str],
    *,
    config: TrainConfig,
    cache_dir: str | Path,
    trunk_factory: Callable[[], keras.Model],
    progress: Progress | None = None,
) -> FeatureSet:
    """Pooled trunk features for ``relpaths``, from the cache where possible.

    ``content_hashes[i]`` is the sha256 of ``relpaths[i]``'s bytes (``DatasetScan.files``).
    Missing photos are decoded with ``images.load_image`` in a thread pool and pushed
    through the trunk (LiteRT when the converted trunk is available or can be made,
    ``trunk_factory()`` called directly otherwise); the new rows are stored before
    returning. ``progress(done, total)`` is called after each extracted batch and may raise
    (e.g. ``TrainingCancelled``) to abandon the extraction; nothing partial is stored.
    """
    started = time.perf_counter()
    key = cache_key(config)
    folder = Path(cache_dir) / "features" / key
    folder.mkdir(parents=True, exist_ok=True)
    with locked(folder / ".lock"):
        known, bad = _load_index(folder)
        first: dict[str, int] = {}
        for position, content_hash in enumerate(content_hashes):
            if content_hash not in known and content_hash not in bad:
                first.setdefault(content_hash, position)
        missing = list(first)
        engine, stats = "cache", {}
        if missing:
            new_paths = [relpaths[first[h]] for h in missing]
            rows, failed, engine, stats = _extract(
                root, new_paths, config, Path(cache_dir), key, trunk_factory, progress
            )
            new_bad = {missing[i]: reason for i, reason in failed}
            good = [h for i, h in enumerate(missing) if missing[i] not in new_bad]
            _write_shard(folder, good, rows, new_bad)
            known.update({h: rows[i] for i, h in enumerate(good)})
            bad.update(new_bad)
    kept = [i for i, h in enumerate(content_hashes) if h in known]
    failures = [(i, bad[h]) for i, h in enumerate(content_hashes) if h in bad]
    dim = next(iter(known.values())).shape[0] if known else 0
    features = (
        np.stack([known[content_hashes[i]] for i in kept]).astype(np.float32)
        if kept
        else np.zeros((0, dim), np.float32)
    )
    return FeatureSet(
        features=features,
        kept=kept,
        failures=failures,
        cache_hit=not missing,
        extracted=len(missing),
        seconds=time.perf_counter() - started,
        engine=engine,
        key=key,
        stats=stats,
    )


def cached_trunk_tflite(cache_dir: str | Path, key: str) -> Path | None:
    """The trunk's LiteRT conversion for cache ``key`` if one is on disk, else None."""
    path = _trunk_path(cache_dir, key)
    return path if path.is_file() else None


def _trunk_path(cache_dir: str | Path, key: str) -> Path:
    return Path(cache_dir) / "trunks" / f"{key}.tflite"


def trunk_tflite(
    config: TrainConfig, cache_dir: Path, key: str, trunk_factory: Callable[[], keras.Model]
) -> Path | None:
    """The trunk converted for LiteRT, cached under ``trunks/<key>.tflite``; None on failure."""
    path = _trunk_path(cache_dir, key)
    if path.is_file():
        return path
    try:
        from classifier.export import convert_to_tflite

        content = convert_to_tflite(trunk_factory())
    except Exception as exc:  # fall back to TensorFlow rather than fail the job
        log.warning("LiteRT conversion of the trunk failed, extracting with TensorFlow: %s", exc)
        return None
    atomic_write(path, content)
    return path


def _extract(
    root: str | Path,
    relpaths: list[str],
    config: TrainConfig,
    cache_dir: Path,
    key: str,
    trunk_factory: Callable[[], keras.Model],
    progress: Progress | None,
) -> tuple[np.ndarray, list[tuple[int, str]], str, dict[str, float]]:
    started = time.perf_counter()
    run, engine = _runner(config, cache_dir, key, trunk_factory)
    ready = time.perf_counter()
    total = (len(relpaths) + EXTRACT_BATCH - 1) // EXTRACT_BATCH
    rows: list[np.ndarray] = []
    failures: list[tuple[int, str]] = []
    for done, batch in enumerate(_batches(root, relpaths, config.image_size), start=1):
        failures.extend(batch.failures)
        if len(batch.indices):
            rows.append(np.asarray(run(batch.pixels.astype(np.float32)), dtype=np.float32))
        if progress is not None:
            progress(done, total)
    finished = time.perf_counter()
    features = np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)
    stats = {
        "setup_seconds": ready - started,
        "extract_seconds": finished - ready,
        "images_per_second": len(relpaths) / max(finished - ready, 1e-9),
    }
    return features, failures, engine, stats


def _batches(root: str | Path, relpaths: list[str], image_size: int) -> Iterator[Batch]:
    return iter_batches(root, relpaths, image_size=image_size, batch_size=EXTRACT_BATCH)


def _runner(
    config: TrainConfig, cache_dir: Path, key: str, trunk_factory: Callable[[], keras.Model]
) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    path = trunk_tflite(config, cache_dir, key, trunk_factory)
    if path is not None:
        try:
            return _ParallelTrunk(path.read_bytes()).run, "litert"
        except Exception as exc:
            log.warning("LiteRT could not load the trunk, extracting with TensorFlow: %s", exc)
    trunk = trunk_factory()
    # A direct call: predict_on_batch would first spend seconds tracing a graph.
    return (lambda pixels: np.asarray(trunk(pixels, training=False))), "tensorflow"


class _ParallelTrunk:
    """One single-threaded LiteRT interpreter per core, each running a share of a batch.

    XNNPACK is faster per photo on small batches than on 32 at once (a batch of 32 at 224
    keeps ~150 MB of activations, far beyond the caches; one photo's fit): measured here,
    one interpreter with 2 threads on batches of 32 ran the trunk at ~190 photos/s, two
    one-thread interpreters on single photos at ~245. ``invoke`` releases the GIL, so the
    interpreters run side by side in threads, beside the threads decoding the next batch.
    """

    def __init__(self, content: bytes, workers: int | None = None) -> None:
        from classifier.serving import LiteRTRunner

        count = max(1, workers or os.cpu_count() or 1)
        self._runners = [LiteRTRunner(content, num_threads=1) for _ in range(count)]

    def run(self, pixels: np.ndarray) -> np.ndarray:
        shares = np.array_split(pixels, len(self._runners))
        with ThreadPoolExecutor(len(self._runners), thread_name_prefix="graft-trunk") as pool:
            outputs = list(pool.map(self._run_share, self._runners, shares))
        return np.concatenate(outputs)

    @staticmethod
    def _run_share(runner: Any, share: np.ndarray) -> np.ndarray:
        rows = [runner.run(share[i : i + INFER_BATCH]) for i in range(0, len(share), INFER_BATCH)]
        return np.concatenate(rows) if rows else np.zeros((0, *runner.output_shape), np.float32)


def _load_index(folder: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    known: dict[str, np.ndarray] = {}
    bad: dict[str, str] = {}
    for shard in sorted(folder.glob("shard-*.npz")):
        try:
            with np.load(shard, allow_pickle=False) as data:
                features = data["features"]
                known.update(zip(data["hashes"].tolist(), features, strict=True))
                bad.update(
                    zip(data["bad_hashes"].tolist(), data["bad_reasons"].tolist(), strict=True)
                )
        except (OSError, ValueError, KeyError) as exc:
            log.warning("Ignoring unreadable feature cache shard %s: %s", shard, exc)
    return known, bad


def _write_shard(
    folder: Path, hashes: list[str], features: np.ndarray, bad: dict[str, str]
) -> None:
    if not hashes and not bad:
        return
    name = hashlib.sha256("".join([*hashes, *bad]).encode()).hexdigest()[:16]
    with atomic_file(folder / f"shard-{name}.npz") as handle:
        np.savez(
            handle,
            hashes=np.array(hashes, dtype=str),
            features=features.astype(np.float32),
            bad_hashes=np.array(list(bad), dtype=str),
            bad_reasons=np.array(list(bad.values()), dtype=str),
        )
