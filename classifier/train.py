"""Training: a folder of labelled photos in, a trained, evaluated (and exported) model out.

:func:`train` is the one entry point the worker, the CLI and the benchmarks call. It scans
and splits the dataset (``classifier.data``), builds the model (``classifier.model``), then:

1. **Frozen stage** (``config.epochs``): only the head trains. With the feature cache on
   and augmentation off, the trunk runs once per photo (``classifier.features``) and the
   head trains on the cached pooled features — epochs cost milliseconds, and the result is
   the same as streaming images through the frozen trunk. Otherwise the whole model trains
   on the streaming pipeline (``classifier.pipeline``), augmented when asked.
2. **Fine-tuning stage** (optional, ``fine_tune_layers`` x ``fine_tune_epochs``): the top N
   non-BatchNorm backbone layers are unfrozen, the model is recompiled with
   ``fine_tune_learning_rate`` and trained on the streaming pipeline.
3. Evaluation on the validation set (``classifier.evaluate``) and, with ``out_dir``, export
   of a version directory (``classifier.export``). A frozen-stage-only job on a cached
   trunk never builds the full Keras model when an earlier export left a template of it
   (``classifier.assemble``): its ``model.keras`` is the template with the new head's
   weights, its flatbuffer the cached trunk's with the head grafted on.

Callers follow progress through :class:`TrainCallbacks` (per batch, per epoch, per phase)
and cancel through its ``should_stop``. With ``checkpoint_dir`` every finished epoch is
saved (weights, optimizer state, epoch, history, early-stopping state; written atomically)
and a later call with the same directory, config and data resumes at the next epoch, its
optimizer where it was. Runs are seeded
(``keras.utils.set_random_seed``): the same config and data give the same split, initial
weights and shuffling.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from classifier.assemble import Template, assemble, find_template, save_template
from classifier.config import TrainConfig
from classifier.data import (
    DatasetScan,
    hash_cache_path,
    scan_dataset,
    split_dataset,
    verify_images,
)
from classifier.errors import ArtifactError, DatasetError, TrainingCancelled
from classifier.features import extract_features
from classifier.files import atomic_file, atomic_write
from classifier.model import (
    build_head,
    build_model,
    copy_head_weights,
    head_layer_names,
    trunk_of,
    unfreeze_top,
)
from classifier.pipeline import make_dataset, reading_photos
from classifier.serving import MODEL_KERAS

Item = tuple[str, int]
CHECKPOINT_STATE = "checkpoint.json"
CHECKPOINT_WEIGHTS = "weights.npz"
CHECKPOINT_BEST = "best.npz"
CHECKPOINT_OPTIMIZER = "optimizer.npz"

log = logging.getLogger(__name__)


class TrainCallbacks:
    """Progress and cancellation hooks; subclass and override what you need (all no-ops)."""

    def on_phase(self, phase: str, detail: dict[str, Any]) -> None:
        """Called when a phase starts: scanning, extracting, training, fine-tuning,
        evaluating, exporting."""

    def on_batch(self, epoch: int, batch: int, batches: int) -> None:
        """After each batch; ``epoch`` is 1-based and global (0 during feature extraction)."""

    def on_epoch(self, epoch: int, logs: dict[str, Any]) -> None:
        """After each epoch with loss, accuracy, val_loss, val_accuracy, learning_rate,
        seconds and phase."""

    def on_resume(self, history: list[dict[str, Any]]) -> None:
        """Once, when a run resumes from a checkpoint, with the epochs it had finished (each
        with ``on_epoch``'s logs, ``epoch`` included). A caller that records epochs should
        make sure it has all of these: the stopped attempt may have written its checkpoint
        and died before reporting that epoch."""

    def should_stop(self) -> bool:
        """Checked after every batch; return True to raise ``TrainingCancelled``."""
        return False


@dataclass
class TrainResult:
    """What a training run produced; ``to_dict()`` is JSON-ready."""

    class_names: list[str]
    history: list[dict[str, Any]]
    metrics: dict[str, Any]
    fingerprint: str
    train_files: list[Item]
    val_files: list[Item]
    rejected: list[tuple[str, str]]
    seconds: float
    version_dir: Path | None = None
    cache_hit: bool = False
    resumed_from_epoch: int = 0
    stats: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["version_dir"] = str(self.version_dir) if self.version_dir else None
        data["train_files"] = [list(item) for item in self.train_files]
        data["val_files"] = [list(item) for item in self.val_files]
        data["rejected"] = [list(item) for item in self.rejected]
        return data


def default_cache_dir() -> Path:
    """``$GRAFT_CACHE_DIR``, or ``~/.cache/graft``."""
    configured = os.environ.get("GRAFT_CACHE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "graft"


def train(
    data_dir: str | Path,
    config: TrainConfig,
    *,
    out_dir: Path | None = None,
    cache_dir: Path | None = None,
    checkpoint_dir: Path | None = None,
    callbacks: TrainCallbacks | None = None,
    files: list[Item] | None = None,
) -> TrainResult:
    """Train a classifier on ``data_dir/<class>/*`` and return its history and metrics.

    Args:
        data_dir: one sub-folder per class.
        config: everything that decides the result.
        out_dir: when given, the trained model is exported there as a version directory.
        cache_dir: the feature cache (default :func:`default_cache_dir`).
        checkpoint_dir: per-epoch checkpoints; an existing one for the same config and
            data is resumed from its next epoch.
        callbacks: progress and cancellation hooks.
        files: train on exactly these ``(relative path, class index)`` pairs (class index
            into the sorted class folder names) instead of everything in ``data_dir``.

    Raises:
        DatasetError: the dataset cannot be trained on (see ``data.scan_dataset``).
        WeightsUnavailableError: the configured weights cannot be loaded.
        TrainingCancelled: ``callbacks.should_stop()`` returned True.
        FileExistsError: ``out_dir`` already exists (checked before any work).
        OSError: ``out_dir``'s parent folder cannot be made (checked before any work).
    """
    return _Run(Path(data_dir), config, out_dir, cache_dir, checkpoint_dir, callbacks, files).run()


class _Run:
    """One call of :func:`train`: its state, split into one method per step."""

    def __init__(
        self,
        data_dir: Path,
        config: TrainConfig,
        out_dir: Path | None,
        cache_dir: Path | None,
        checkpoint_dir: Path | None,
        callbacks: TrainCallbacks | None,
        files: list[Item] | None,
    ) -> None:
        self.data_dir = data_dir
        self.config = config
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.checkpoint = _Checkpoint(Path(checkpoint_dir)) if checkpoint_dir else None
        self.callbacks = callbacks or TrainCallbacks()
        self.files = files
        self.history: list[dict[str, Any]] = []
        self.stats: dict[str, Any] = {}
        self.cache_hit = False
        self.head: keras.Model | None = None
        self._model: keras.Model | None = None
        self._model_future: Future[keras.Model] | None = None
        self._pending_build: Callable[[], Future[keras.Model]] | None = None
        self._resumed_head: list[np.ndarray] | None = None
        self._head_copied = False
        # The feature cache's key for this config, and the model.keras template that spares
        # building the full model (classifier.assemble), when there is one.
        self._cache_key = ""
        self._template: Template | None = None
        self.use_cache = False
        self._resumed_optimizer: tuple[str | None, list[np.ndarray] | None] = (None, None)
        self.features: dict[str, np.ndarray] = {}

    @property
    def model(self) -> keras.Model:
        """The full classifier; waits for it when it is being built in the background, and
        builds it now if it was not (even where :meth:`_model_needed` said it would not be)."""
        self._start_build(force=True)
        if self._model is None and self._model_future is not None:
            self._model = self._model_future.result()
        if self._model is None:
            raise RuntimeError("The model has not been built yet.")
        return self._model

    # -- the steps -------------------------------------------------------------------------

    def run(self) -> TrainResult:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="graft-build") as builder:
            try:
                return self._run(builder)
            finally:
                if self._model_future is not None:
                    self._model_future.cancel()

    def _run(self, builder: ThreadPoolExecutor) -> TrainResult:
        started = time.perf_counter()
        config = self.config
        if self.out_dir is not None:
            self._check_out_dir(self.out_dir)
        keras.utils.set_random_seed(config.seed)
        self._check_stop()
        self.callbacks.on_phase("scanning", {"data_dir": str(self.data_dir)})
        with self._timed("scan"):
            scan = self._scan()
        use_cache = self.use_cache = config.use_feature_cache and not config.augment
        if use_cache:
            # The head trains on features, not on this model: building MobileNetV2 and loading
            # its weights (~1 s of mostly Python) runs in a thread once the head's first epoch
            # is done, while later epochs run in TensorFlow without the GIL (started earlier
            # it would only slow the tracing of the head's functions). The head's initial
            # weights come from the seed alone (model.build_head), not from this model.
            classes = len(scan.class_names)
            self._pending_build = lambda: builder.submit(build_model, classes, config)
        else:
            with self._timed("build"):
                self._model = build_model(len(scan.class_names), config)

        with self._timed("extract" if use_cache else "verify"):
            if use_cache:
                scan = self._extract(scan, scan.items)
            else:
                scan = scan.without(
                    verify_images(self.data_dir, [path for path, _ in scan.items]),
                    min_images_per_class=config.min_images_per_class,
                )
        # Split the readable photos only, so every class keeps a validation photo even when
        # the ones its hashes chose turn out to be unreadable.
        self.train_items, self.val_items = split_dataset(scan, config.validation_split, config.seed)
        self.scan = scan

        state = self._resume()
        resumed_from = state["epoch"]
        if not state["frozen_done"]:
            if state["epoch"] < config.epochs and not state["stopped"]:
                self.callbacks.on_phase("training", self._detail(use_cache))
                with self._timed("train"):
                    if use_cache:
                        self._train_head_on_features(state)
                    else:
                        self._train_streaming(
                            state, "training", config.epochs, config.learning_rate
                        )
            else:
                self._restore_best(state, "head")
            state.update(frozen_done=True, frozen_epochs=state["epoch"], stopped=False)
        if config.fine_tunes:
            fine_tune_end = state["frozen_epochs"] + config.fine_tune_epochs
            unfrozen = unfreeze_top(self.model, config.fine_tune_layers)
            done = state["kind"] == "model" and state["stopped"]
            if state["epoch"] < fine_tune_end and not done:
                self.callbacks.on_phase(
                    "fine-tuning", {**self._detail(False), "unfrozen_layers": unfrozen}
                )
                with self._timed("fine_tune"):
                    self._train_streaming(
                        state, "fine-tuning", fine_tune_end, config.fine_tune_learning_rate
                    )
            else:
                self._restore_best(state, "model")

        self.callbacks.on_phase("evaluating", {"images": len(self.val_items)})
        with self._timed("evaluate"):
            metrics = self._evaluate(use_cache and not config.fine_tunes)
        version_dir = None
        if self.out_dir is not None:
            self.callbacks.on_phase("exporting", {"out_dir": str(self.out_dir)})
            with self._timed("export"):
                version_dir = self._export(metrics, grafted=use_cache and not config.fine_tunes)
        return TrainResult(
            class_names=list(scan.class_names),
            history=self.history,
            metrics=metrics,
            fingerprint=scan.fingerprint,
            train_files=self.train_items,
            val_files=self.val_items,
            rejected=list(scan.rejected),
            seconds=time.perf_counter() - started,
            version_dir=version_dir,
            cache_hit=self.cache_hit,
            resumed_from_epoch=resumed_from,
            stats=self.stats,
        )

    @staticmethod
    def _check_out_dir(out_dir: Path) -> None:
        """Refuse an ``out_dir`` that exists or cannot be made, before any work is done."""
        if out_dir.exists():
            raise FileExistsError(f"The version directory {out_dir} already exists.")
        try:
            out_dir.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"The version directory {out_dir} cannot be made in {out_dir.parent}: "
                f"{exc.strerror}",
            ) from None

    def _scan(self) -> DatasetScan:
        scan = scan_dataset(
            self.data_dir,
            min_images_per_class=1,
            check_images=False,
            hash_cache=hash_cache_path(self.cache_dir, self.data_dir),
        )
        if self.files is not None:
            wanted = dict(self.files)
            missing = sorted(set(wanted) - set(scan.files))
            if missing:
                raise DatasetError(
                    f"{len(missing)} file(s) to train on are missing from {self.data_dir}, "
                    f"e.g. {missing[0]}."
                )
            labels = dict(scan.items)
            wrong = sorted(path for path, label in wanted.items() if labels[path] != label)
            if wrong:
                raise DatasetError(f"{wrong[0]} is listed with the wrong class.")
            scan = scan.restricted_to(wanted)
        return scan.without([], min_images_per_class=self.config.min_images_per_class)

    def _extract(self, scan: DatasetScan, items: list[Item]) -> DatasetScan:
        relpaths = [path for path, _ in items]
        batches = math.ceil(len(relpaths) / 32)
        self.callbacks.on_phase("extracting", {"images": len(relpaths), "batches": batches})

        def progress(done: int, total: int) -> None:
            self.callbacks.on_batch(0, done, total)
            self._check_stop()

        result = extract_features(
            self.data_dir,
            relpaths,
            [scan.file_hash(path) for path in relpaths],
            config=self.config,
            cache_dir=self.cache_dir,
            trunk_factory=lambda: trunk_of(self.model),
            progress=progress,
        )
        self.cache_hit = result.cache_hit
        self._cache_key = result.key
        self.stats["extraction"] = {
            "engine": result.engine,
            "images": result.extracted,
            "seconds": result.seconds,
            **result.stats,
        }
        rows = dict(zip(result.kept, result.features, strict=True))
        self.features = {relpaths[i]: row for i, row in rows.items()}
        failures = [(relpaths[i], reason) for i, reason in result.failures]
        return scan.without(failures, min_images_per_class=self.config.min_images_per_class)

    def _train_head_on_features(self, state: dict[str, Any]) -> None:
        """Frozen stage on cached features; the head starts from (and ends in) the model's."""
        config = self.config
        x_train, y_train = self._feature_arrays(self.train_items)
        x_val, y_val = self._feature_arrays(self.val_items)
        head = build_head(len(self.scan.class_names), x_train.shape[1], config)  # seeded init
        self._template = self._find_template(head)
        if self._resumed_head is not None:
            _set_head_weights(head, config, self._resumed_head)
        steps = math.ceil(len(x_train) / config.batch_size)
        _compile(head, config.learning_rate, fused=True)  # the optimizer and loss; no fit
        self._restore_optimizer(head, "head")
        bridge = _Bridge(
            self,
            state,
            "training",
            steps,
            get_weights=lambda: _head_weights(head, config),
            set_weights=lambda weights: _set_head_weights(head, config, weights),
            kind="head",
        )
        bridge.set_model(head)
        loop = _HeadLoop(head, x_train, y_train, x_val, y_val, config.batch_size)
        for epoch in range(state["epoch"], config.epochs):
            bridge.on_epoch_begin(epoch)
            logs = loop.train_epoch(_epoch_order(len(x_train), config.seed, epoch))
            bridge.on_train_batch_end(steps - 1)  # every batch of the epoch is done
            bridge.on_epoch_end(epoch, {**logs, **loop.validate()})
            if head.stop_training:
                break
        bridge.finish()
        self.head = head
        if self._model_needed():
            with self._timed("build (waited)"):
                self._full_model()

    def _train_streaming(
        self, state: dict[str, Any], phase: str, end_epoch: int, learning_rate: float
    ) -> None:
        config = self.config
        model = self.model
        _compile(model, learning_rate)
        kind = "head" if phase == "training" else "model"
        self._restore_optimizer(model, kind)
        failures: list[tuple[str, str]] = []
        train_ds = make_dataset(
            self.data_dir,
            self.train_items,
            image_size=config.image_size,
            batch_size=config.batch_size,
            shuffle=True,
            augment=config.augment,
            seed=config.seed,
            failures=failures,
        )
        val_ds = make_dataset(
            self.data_dir,
            self.val_items,
            image_size=config.image_size,
            batch_size=config.batch_size,
            failures=failures,
        )
        bridge = _Bridge(
            self,
            state,
            phase,
            math.ceil(len(self.train_items) / config.batch_size),
            get_weights=lambda: _get_weights(model, config, kind),
            set_weights=lambda weights: _set_weights(model, config, kind, weights),
            kind=kind,
        )
        with reading_photos(failures):
            model.fit(
                train_ds,
                epochs=end_epoch,
                initial_epoch=state["epoch"],
                validation_data=val_ds,
                shuffle=False,  # the pipeline shuffles, every epoch
                callbacks=[bridge],
                verbose=0,
            )
        bridge.finish()

    def _evaluate(self, on_features: bool) -> dict[str, Any]:
        from classifier.evaluate import evaluate_predictions

        labels = np.array([label for _, label in self.val_items], dtype=np.int64)
        if on_features and self.head is not None:
            x_val, _ = self._feature_arrays(self.val_items)
            probs = np.asarray(self.head.predict_on_batch(x_val))
        else:
            failures: list[tuple[str, str]] = []
            dataset = make_dataset(
                self.data_dir,
                self.val_items,
                image_size=self.config.image_size,
                batch_size=self.config.batch_size,
                failures=failures,
            )
            # One traced function for the whole set; predict_on_batch per batch was
            # re-traced on every call (~1.5 s each, and its memory piled up).
            with reading_photos(failures):
                probs = np.asarray(self._full_model().predict(dataset, verbose=0))
        return evaluate_predictions(
            labels,
            probs,
            self.scan.class_names,
            paths=[path for path, _ in self.val_items],
        )

    def _export(self, metrics: dict[str, Any], *, grafted: bool) -> Path:
        from classifier.export import export_version

        scan = self.scan
        dataset = {
            "fingerprint": scan.fingerprint,
            "root": str(scan.root),
            "class_names": scan.class_names,
            "counts": scan.counts(),
            "total_bytes": scan.total_bytes,
            "train_files": [list(item) for item in self.train_items],
            "val_files": [list(item) for item in self.val_items],
            "rejected": [list(item) for item in scan.rejected],
            "image_size": self.config.image_size,
        }
        common = {
            "class_names": scan.class_names,
            "config": self.config,
            "metrics": metrics,
            "history": self.history,
            "dataset": dataset,
        }
        if grafted and self._template is not None:
            version = self._export_assembled(common)
            if version is not None:
                return version
        tflite = self._grafted_tflite() if grafted else None
        version = export_version(self._full_model(), self.out_dir, tflite=tflite, **common)
        if tflite is not None and self.head is not None:
            # The trunk is the cached one, untouched: the next job with this model can
            # write its model.keras from this one.
            save_template(
                self.cache_dir, self._cache_key, self.head, self.config, version / MODEL_KERAS
            )
        return version

    def _export_assembled(self, common: dict[str, Any]) -> Path | None:
        """The version written without the full model (``classifier.assemble``); None when
        the template or the cached trunk turns out unusable (the caller saves the model)."""
        from classifier.export import export_assembled_version
        from classifier.features import cached_trunk_tflite

        template, head = self._template, self.head
        assert template is not None and head is not None
        self._template = None  # whatever happens next, a fallback saves the model
        trunk = cached_trunk_tflite(self.cache_dir, self._cache_key)
        try:
            trunk_tflite = trunk.read_bytes() if trunk is not None else None
        except OSError:
            trunk_tflite = None
        if trunk_tflite is None:  # gone since training started: convert the whole model
            return None
        try:
            model_keras = assemble(template, head, self.config)
        except (ArtifactError, OSError) as exc:
            log.warning("The model template is unusable, saving the whole model: %s", exc)
            template.path.unlink(missing_ok=True)
            return None
        try:
            return export_assembled_version(
                head, self.out_dir, model_keras=model_keras, trunk_tflite=trunk_tflite, **common
            )
        except ArtifactError as exc:
            log.warning("%s Saving the whole model and checking it against Keras.", exc)
            return None

    def _grafted_tflite(self) -> bytes | None:
        """The exported flatbuffer spliced from the cached trunk and the trained head.

        Only when the trunk was never trained (the cached trunk is then exactly the model's)
        and the feature cache holds its conversion; None (full conversion) otherwise.
        ``export_version`` checks the result against Keras either way.
        """
        from classifier.export import graft_tflite
        from classifier.features import cache_key, cached_trunk_tflite

        path = cached_trunk_tflite(self.cache_dir, cache_key(self.config))
        if self.head is None or path is None:
            return None
        try:
            return graft_tflite(path.read_bytes(), self.head)
        except Exception as exc:  # a full conversion still gives a correct version
            log.warning("Grafting the head onto the cached trunk failed (%s); converting.", exc)
            return None

    # -- helpers ---------------------------------------------------------------------------

    def _resume(self) -> dict[str, Any]:
        """The checkpointed state for this config and data (weights loaded), or a fresh one."""
        fresh = {
            "epoch": 0,
            "frozen_done": False,
            "frozen_epochs": 0,
            "history": [],
            "best_loss": None,
            "best_epoch": 0,
            "wait": 0,
            "stopped": False,
            "kind": None,
            "best": None,
        }
        if self.checkpoint is None:
            return fresh
        self.checkpoint.signature = self._signature()
        state = self.checkpoint.load()
        if state is None:
            return fresh
        weights = state.pop("weights")
        self._resumed_optimizer = (state["kind"], state.pop("optimizer", None))
        if state["kind"] == "head" and self.use_cache:
            self._resumed_head = weights  # the head trains on features: it takes them there
        else:
            _set_weights(self.model, self.config, state["kind"], weights)
        self.history = state["history"]
        self.callbacks.on_resume([dict(record) for record in self.history])
        return state

    def _restore_optimizer(self, model: keras.Model, kind: str) -> None:
        """Give a resumed stage its optimizer back (Adam's step count and moments).

        Used once, by the stage the checkpoint was written in; without it Adam would
        restart its moment estimates, and the resumed run would differ from an
        uninterrupted one more than its shuffling does.
        """
        saved_kind, saved = self._resumed_optimizer
        self._resumed_optimizer = (None, None)
        if saved is None or saved_kind != kind:
            return
        if not restore_optimizer_state(model, saved):
            log.warning("The checkpoint's optimizer state does not fit; Adam starts afresh.")

    def _restore_best(self, state: dict[str, Any], kind: str) -> None:
        if self.config.early_stopping_patience > 0 and state["kind"] == kind and state["best"]:
            _set_weights(self.model, self.config, kind, state["best"])

    def _signature(self) -> str:
        identity = {
            "config": self.config.to_dict(),
            "fingerprint": self.scan.fingerprint,
            "train": self.train_items,
            "val": self.val_items,
        }
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()

    def _feature_arrays(self, items: list[Item]) -> tuple[np.ndarray, np.ndarray]:
        x = np.stack([self.features[path] for path, _ in items]).astype(np.float32)
        y = np.array([label for _, label in items], dtype=np.int32)
        return x, y

    def _detail(self, on_features: bool) -> dict[str, Any]:
        return {
            "train_images": len(self.train_items),
            "val_images": len(self.val_items),
            "classes": len(self.scan.class_names),
            "feature_cache": on_features,
        }

    @contextmanager
    def _timed(self, phase: str) -> Iterator[None]:
        """Add the block's wall time to ``stats["phases"][phase]`` (seconds)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            phases = self.stats.setdefault("phases", {})
            phases[phase] = phases.get(phase, 0.0) + time.perf_counter() - started

    def _start_build(self, *, force: bool = False) -> None:
        """Start the deferred background build of the model, if there is one and the run
        needs the model (or ``force``); idempotent."""
        idle = self._model is None and self._model_future is None
        if idle and self._pending_build and (force or self._model_needed()):
            self._model_future = self._pending_build()

    def _model_needed(self) -> bool:
        """Whether this run needs the full Keras model, not just the head: for fine-tuning,
        training without the feature cache, or an export with no template to write it from."""
        return (
            self.config.fine_tunes
            or not self.use_cache
            or (self.out_dir is not None and self._template is None)
        )

    def _full_model(self) -> keras.Model:
        """The full classifier, with the head trained on features copied in (once)."""
        model = self.model
        if self.head is not None and not self._head_copied:
            copy_head_weights(self.head, model, self.config)
            self._head_copied = True
        return model

    def _find_template(self, head: keras.Model) -> Template | None:
        """The cached model.keras template for this run's model, if the run can use one: a
        frozen-trunk job (no fine-tuning) that exports, with the trunk's conversion cached."""
        from classifier.features import cached_trunk_tflite

        if self.out_dir is None or self.config.fine_tunes or not self._cache_key:
            return None
        if cached_trunk_tflite(self.cache_dir, self._cache_key) is None:
            return None
        return find_template(self.cache_dir, self._cache_key, head, self.config)

    def _check_stop(self) -> None:
        if self.callbacks.should_stop():
            raise TrainingCancelled("Training was cancelled.")


class _HeadLoop:
    """The head's training loop on cached features: one traced call per epoch.

    Keras's own pattern for a loop of one's own ("writing a training loop from scratch"):
    the head, its compiled optimizer and loss, ``GradientTape``, in a ``tf.function``. On
    features the whole epoch is a handful of small matrix products per batch, and
    ``fit``'s machinery (its data adapter and iterator, metric objects, the while loop
    around ``steps_per_execution``) cost as much as the arithmetic: measured here on 2,400
    pooled MobileNetV2 features, 0.25-0.29 s per epoch through ``fit`` against 0.15 s
    here, and about half the tracing. Batches are ``batch_size`` photos in the epoch's
    order (the last one smaller), the loss and accuracy are their means over photos, as
    ``fit`` reports them; validation is one call over the validation features.
    """

    def __init__(
        self,
        head: keras.Model,
        x_train: np.ndarray,
        y_train: np.ndarray,
        x_val: np.ndarray,
        y_val: np.ndarray,
        batch_size: int,
    ) -> None:
        import tensorflow as tf

        self._x, self._y = tf.constant(x_train), tf.constant(y_train)
        self._x_val, self._y_val = tf.constant(x_val), tf.constant(y_val)
        self._batch_size = batch_size
        self.head = head
        optimizer = head.optimizer
        if not optimizer.built:
            optimizer.build(head.trainable_variables)
        self._train_epoch = tf.function(self._epoch)
        self._validate = tf.function(self._validation)

    def train_epoch(self, order: np.ndarray) -> dict[str, float]:
        loss, accuracy = self._train_epoch(order)
        return {"loss": float(loss), "accuracy": float(accuracy)}

    def validate(self) -> dict[str, float]:
        loss, accuracy = self._validate()
        return {"val_loss": float(loss), "val_accuracy": float(accuracy)}

    def _epoch(self, order: Any) -> tuple[Any, Any]:
        import tensorflow as tf

        head, optimizer = self.head, self.head.optimizer
        count = tf.shape(order)[0]
        loss_sum, correct = tf.constant(0.0), tf.constant(0.0)
        for start in tf.range(0, count, self._batch_size):
            batch = order[start : start + self._batch_size]
            x, y = tf.gather(self._x, batch), tf.gather(self._y, batch)
            with tf.GradientTape() as tape:
                probs = head(x, training=True)
                loss = head.loss(y, probs)
                total = loss + tf.add_n(head.losses) if head.losses else loss
            variables = head.trainable_variables
            optimizer.apply(tape.gradient(total, variables), variables)
            loss_sum += loss * tf.cast(tf.shape(batch)[0], tf.float32)
            correct += _correct(y, probs)
        photos = tf.cast(count, tf.float32)
        return loss_sum / photos, correct / photos

    def _validation(self) -> tuple[Any, Any]:
        import tensorflow as tf

        probs = self.head(self._x_val, training=False)
        photos = tf.cast(tf.shape(self._y_val)[0], tf.float32)
        return self.head.loss(self._y_val, probs), _correct(self._y_val, probs) / photos


def _correct(labels: Any, probs: Any) -> Any:
    import tensorflow as tf

    predicted = tf.argmax(probs, axis=1, output_type=labels.dtype)
    return tf.reduce_sum(tf.cast(tf.equal(predicted, labels), tf.float32))


def _epoch_order(count: int, seed: int, epoch: int) -> np.ndarray:
    """The order of the training photos in ``epoch`` (0-based): a permutation drawn from
    the seed and the epoch alone, so a resumed run sees the orders an uninterrupted one
    would."""
    return np.random.default_rng([seed, epoch]).permutation(count).astype(np.int32)


class _Bridge(keras.callbacks.Callback):
    """Keras callback: user callbacks, cancellation, early stopping, checkpoints."""

    def __init__(
        self,
        run: _Run,
        state: dict[str, Any],
        phase: str,
        batches: int,
        *,
        get_weights: Callable[[], list[np.ndarray]],
        set_weights: Callable[[list[np.ndarray]], None],
        kind: str,
    ) -> None:
        super().__init__()
        self.run = run
        self.state = state
        self.phase = phase
        self.batches = batches
        self.get_weights = get_weights
        self.set_weights = set_weights
        self.kind = kind
        self.epoch_started = time.perf_counter()
        self.current = state["epoch"]
        self.reported = 0
        if state.get("kind") != kind:  # a new stage: its own early-stopping bookkeeping
            state.update(best_loss=None, best_epoch=0, wait=0, best=None, kind=kind, stopped=False)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch_started = time.perf_counter()
        self.current = epoch + 1
        self.reported = 0

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        # With steps_per_execution > 1 Keras calls this once per group of steps, with the
        # group's last batch: every batch up to it is done, so each one is reported.
        for done in range(self.reported + 1, batch + 2):
            self.run.callbacks.on_batch(self.current, done, self.batches)
        self.reported = batch + 1
        self.run._check_stop()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        record = {
            "epoch": epoch + 1,
            "phase": self.phase,
            "loss": _number(logs.get("loss")),
            "accuracy": _number(logs.get("accuracy")),
            "val_loss": _number(logs.get("val_loss")),
            "val_accuracy": _number(logs.get("val_accuracy")),
            "learning_rate": _number(
                keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
            ),
            "seconds": time.perf_counter() - self.epoch_started,
        }
        state = self.state
        state["epoch"] = epoch + 1
        self.run.history.append(record)
        state["history"] = self.run.history
        patience = self.run.config.early_stopping_patience
        if patience > 0:
            loss = record["val_loss"]
            if loss is not None and (state["best_loss"] is None or loss < state["best_loss"]):
                state.update(best_loss=loss, best_epoch=epoch + 1, wait=0, best=self.get_weights())
            else:
                state["wait"] += 1
                if state["wait"] >= patience:
                    state["stopped"] = True
                    self.model.stop_training = True
        if self.run.checkpoint is not None:
            self.run.checkpoint.save(
                state, self.get_weights(), optimizer_state(self.model.optimizer)
            )
        self.run.callbacks.on_epoch(epoch + 1, dict(record))
        self.run._start_build()

    def finish(self) -> None:
        """Restore the best epoch's weights when early stopping is on."""
        if self.run.config.early_stopping_patience > 0 and self.state["best"] is not None:
            self.set_weights(self.state["best"])


class _Checkpoint:
    """``checkpoint.json`` + ``weights.npz`` (+ ``best.npz``), each replaced atomically."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.signature = ""

    def save(
        self,
        state: dict[str, Any],
        weights: list[np.ndarray],
        optimizer: list[np.ndarray] | None = None,
    ) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        _atomic_npz(self.folder / CHECKPOINT_WEIGHTS, weights)
        if optimizer is not None:
            _atomic_npz(self.folder / CHECKPOINT_OPTIMIZER, optimizer)
        if state.get("best") is not None:
            _atomic_npz(self.folder / CHECKPOINT_BEST, state["best"])
        meta = {k: v for k, v in state.items() if k not in ("weights", "best")}
        meta["signature"] = self.signature
        meta["has_best"] = state.get("best") is not None
        meta["has_optimizer"] = optimizer is not None
        _atomic_bytes(self.folder / CHECKPOINT_STATE, json.dumps(meta).encode())

    def load(self) -> dict[str, Any] | None:
        path = self.folder / CHECKPOINT_STATE
        if not path.is_file():
            return None
        try:
            meta = json.loads(path.read_text())
            if meta.get("signature") != self.signature:
                return None
            meta["weights"] = _load_npz(self.folder / CHECKPOINT_WEIGHTS)
            meta["best"] = _load_npz(self.folder / CHECKPOINT_BEST) if meta["has_best"] else None
            meta["optimizer"] = (
                _load_npz(self.folder / CHECKPOINT_OPTIMIZER) if meta.get("has_optimizer") else None
            )
        except (OSError, ValueError, KeyError):
            return None
        return meta


def _compile(model: keras.Model, learning_rate: float, *, fused: bool = False) -> None:
    model.compile(
        optimizer=(FusedAdam if fused else keras.optimizers.Adam)(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=["accuracy"],
    )


class FusedAdam(keras.optimizers.Adam):
    """Keras's Adam, each variable updated by TensorFlow's fused ``ResourceApplyAdam`` kernel.

    Same rule as ``keras.optimizers.Adam`` (results agree to float rounding), but one pass
    over each variable instead of the eight element-wise ops Keras 3 emits: on the head's
    1.8 M parameters an Adam step drops from ~6 ms to ~1.5 ms here, which is most of an
    epoch on cached features. Used only for the head trained on features (that model is
    never saved, so no custom class ends up in ``model.keras``).
    """

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        import tensorflow as tf

        if self.amsgrad:
            super().update_step(gradient, variable, learning_rate)
            return
        dtype = variable.dtype
        index = self._get_variable_index(variable)
        step = tf.cast(self.iterations + 1, dtype)
        beta_1 = tf.cast(self.beta_1, dtype)
        beta_2 = tf.cast(self.beta_2, dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=_handle(variable),
            m=_handle(self._momentums[index]),
            v=_handle(self._velocities[index]),
            beta1_power=tf.pow(beta_1, step),
            beta2_power=tf.pow(beta_2, step),
            lr=tf.cast(learning_rate, dtype),
            beta1=beta_1,
            beta2=beta_2,
            epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.cast(gradient, dtype),
            use_locking=False,
        )


def optimizer_state(optimizer: keras.optimizers.Optimizer) -> list[np.ndarray]:
    """The optimizer's variables (step count, then e.g. Adam's moments) as arrays."""
    return [keras.ops.convert_to_numpy(variable) for variable in optimizer.variables]


def restore_optimizer_state(model: keras.Model, saved: list[np.ndarray]) -> bool:
    """Load ``optimizer_state`` output into a compiled model's optimizer; False if it misfits.

    The optimizer is built for the model's trainable variables first (``fit`` then keeps
    it), so the variables line up as they did when the state was saved.
    """
    optimizer = model.optimizer
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    variables = list(optimizer.variables)
    if len(variables) != len(saved) or any(
        tuple(v.shape) != tuple(a.shape) for v, a in zip(variables, saved, strict=True)
    ):
        return False
    for variable, value in zip(variables, saved, strict=True):
        variable.assign(value)
    return True


def _handle(variable: Any) -> Any:
    """The TensorFlow resource handle behind a Keras variable (or a bare ``tf.Variable``)."""
    return (variable.value if isinstance(variable, keras.Variable) else variable).handle


def _head_weights(model: keras.Model, config: TrainConfig) -> list[np.ndarray]:
    return [w for name in head_layer_names(config) for w in model.get_layer(name).get_weights()]


def _set_head_weights(model: keras.Model, config: TrainConfig, weights: list[np.ndarray]) -> None:
    position = 0
    for name in head_layer_names(config):
        layer = model.get_layer(name)
        count = len(layer.get_weights())
        layer.set_weights(weights[position : position + count])
        position += count


def _get_weights(model: keras.Model, config: TrainConfig, kind: str) -> list[np.ndarray]:
    return _head_weights(model, config) if kind == "head" else model.get_weights()


def _set_weights(
    model: keras.Model, config: TrainConfig, kind: str, weights: list[np.ndarray]
) -> None:
    if kind == "head":
        _set_head_weights(model, config, weights)
    else:
        model.set_weights(weights)


def _number(value: Any) -> float | None:
    if value is None:
        return None
    number = float(np.asarray(value))
    return number if math.isfinite(number) else None


def _atomic_npz(path: Path, arrays: list[np.ndarray]) -> None:
    with atomic_file(path) as handle:
        np.savez(handle, *arrays)


def _atomic_bytes(path: Path, content: bytes) -> None:
    atomic_write(path, content)


def _load_npz(path: Path) -> list[np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return [data[f"arr_{i}"] for i in range(len(data.files))]
