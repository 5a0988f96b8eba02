"""Celery tasks. Arguments are ids; rows are the source of truth.

Task bodies are short: claim the row, call ``classifier``, persist through
``webapp.services``. TensorFlow is imported inside ``train_job``, ``quantize_version``
(through ``services.model_version_quantize``) and ``remove_stale_exports`` only, so
importing this module (to enqueue) stays light, and the worker's parent process never
loads it before forking its children.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings

from webapp import selectors, services

log = logging.getLogger(__name__)

# An export writes its temporary folder within a minute or two; one an hour old is orphaned.
STALE_EXPORT_SECONDS = 3600
STAGED_NAME = re.compile(r"job-(\d+)-(\d+)")
CHECKPOINT_NAME = re.compile(r"job-(\d+)")


@shared_task(name="worker.tasks.ping")
def ping() -> dict:
    """A round-trip check: answers which worker process ran it."""
    return {"pong": True, "hostname": socket.gethostname(), "pid": os.getpid()}


@shared_task(name="worker.tasks.import_dataset", acks_late=True, reject_on_worker_lost=True)
def import_dataset(dataset_id: int) -> str:
    """Claim the import, extract/copy/download its images and mark it ready or failed."""
    dataset = services.dataset_import_claim(dataset_id=dataset_id)
    if dataset is None:
        return "skipped: not waiting for a worker (already claimed or finished)"
    heartbeat = _Heartbeat(
        f"dataset-{dataset_id}",
        partial(services.dataset_import_beat, dataset=dataset),
        interval=_heartbeat_interval(),
    )
    heartbeat.start()
    try:
        dataset = services.dataset_run_import(dataset=dataset)
    finally:
        heartbeat.stop()
    return dataset.status


# --- Training ---------------------------------------------------------------------------


class _Heartbeat(threading.Thread):
    """Calls ``beat`` every few seconds while the task runs, also through long silent
    phases (loading weights, converting to TFLite, unpacking a zip) that report nothing;
    ``beat`` returns True when the task should stop (a cancel has been requested, or its
    attempt has lost its claim)."""

    def __init__(self, name: str, beat: Callable[[], bool | None], interval: float):
        super().__init__(daemon=True, name=f"heartbeat-{name}")
        self.beat = beat
        self.interval = interval
        self.stopped = threading.Event()
        self.cancel_requested = threading.Event()

    def run(self) -> None:
        from django.db import connection

        try:
            while not self.stopped.wait(self.interval):
                if self.beat():
                    self.cancel_requested.set()
        except Exception:  # the database went away: the reconcile will notice
            log.exception("%s failed", self.name)
        finally:
            connection.close()

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=10)


def _heartbeat_interval() -> float:
    return max(1.0, settings.GRAFT_HEARTBEAT_TIMEOUT / 6)


EXTRACTION_SHARE = 0.6
# No "about N left" until the rate has been measured over this long and this much of the
# job: the first batches (graph tracing, cold caches) say little about the rest.
ETA_AFTER_SECONDS = 10.0
ETA_AFTER_PROGRESS = 0.05


def _job_callbacks(job_id: int, attempt: int, heartbeat: _Heartbeat, epochs_total: int) -> Any:
    """Callbacks that write progress and its ETA (at most once a second, and at every phase
    and epoch), epochs and stop checks, all as ``attempt`` of the job: once it has lost its
    claim they write nothing and stop."""
    from classifier.train import TrainCallbacks

    class JobCallbacks(TrainCallbacks):
        def __init__(self) -> None:
            self.last_write = 0.0
            self.phase = "starting"
            self.extracted = False
            self.cancelled = False
            self.progress: float | None = None
            self.origin: tuple[float, float] | None = None

        def on_phase(self, phase: str, detail: dict) -> None:
            self.phase = phase
            self._write(force=True)

        def on_batch(self, epoch: int, batch: int, batches: int) -> None:
            self._advance(self._fraction(epoch, batch, batches))
            self._write(epoch=epoch, batch=batch, batches_total=batches)

        def on_epoch(self, epoch: int, logs: dict) -> None:
            services.training_job_record_epoch(
                job_id=job_id, attempt=attempt, epoch=epoch, logs=logs
            )
            self._advance(self._fraction(epoch, 1, 1))
            self._write(force=True, epoch=epoch)

        def on_resume(self, history: list[dict[str, Any]]) -> None:
            # The killed attempt may have checkpointed an epoch and died before recording it.
            for record in history:
                services.training_job_record_epoch(
                    job_id=job_id, attempt=attempt, epoch=int(record["epoch"]), logs=record
                )

        def should_stop(self) -> bool:
            return self.cancelled or heartbeat.cancel_requested.is_set()

        def _fraction(self, epoch: int, batch: int, batches: int) -> float:
            if self.phase == "extracting" or epoch == 0:
                # One pass of the trunk over every photo: the bulk of a cached run's time,
                # counted as its first 60 %; the head's epochs share the rest.
                self.extracted = True
                return EXTRACTION_SHARE * batch / max(batches, 1)
            done = min(1.0, (epoch - 1 + batch / max(batches, 1)) / max(epochs_total, 1))
            if self.extracted:
                done = EXTRACTION_SHARE + (1 - EXTRACTION_SHARE) * done
            return min(0.99, done)

        def _advance(self, progress: float) -> None:
            if self.origin is None:
                # Measure the rate from the first batch on: start-up (imports, weights,
                # conversion) is not part of what remains.
                self.origin = (time.monotonic(), progress)
            self.progress = progress

        def _eta(self, now: float) -> float | None:
            """Seconds left after ``self.progress`` at the rate measured since the first
            batch; None until that rate rests on enough time and progress."""
            if self.origin is None or self.progress is None:
                return None
            start, start_progress = self.origin
            elapsed, done = now - start, self.progress - start_progress
            if elapsed < ETA_AFTER_SECONDS or done < ETA_AFTER_PROGRESS:
                return None
            return elapsed / done * (1 - self.progress)

        def _write(self, *, force: bool = False, **fields: Any) -> None:
            """Write ``fields`` with the latest progress and an ETA computed from it now."""
            now = time.monotonic()
            if not force and now - self.last_write < 1.0:
                return
            self.last_write = now
            if self.progress is not None:
                fields["progress"] = self.progress
            if services.training_job_progress(
                job_id=job_id,
                attempt=attempt,
                phase=self.phase,
                eta_seconds=self._eta(now),
                **fields,
            ):
                self.cancelled = True

    return JobCallbacks()


def _staging_root() -> Path:
    return Path(settings.GRAFT_DATA_DIR) / "models" / ".staging"


def _staging_dir(job_id: int, attempt: int) -> Path:
    return _staging_root() / f"job-{job_id}-{attempt}"


def _checkpoint_dir(job_id: int) -> Path:
    return Path(settings.GRAFT_DATA_DIR) / "checkpoints" / f"job-{job_id}"


@shared_task(
    bind=True,
    name="worker.tasks.train_job",
    acks_late=True,
    reject_on_worker_lost=True,
)
def train_job(self: Any, job_id: int) -> str:
    """Claim the job, train, export, and persist the new version (or the failure).

    Every write is made as this claim's attempt: one that the reconcile judged lost (silent
    for longer than ``GRAFT_HEARTBEAT_TIMEOUT``) and requeued stops at its next batch or
    write, discards its export and leaves the row and the checkpoints to the retry.
    """
    job = services.training_job_claim(job_id=job_id, worker=self.request.hostname or "")
    if job is None:
        return "skipped: not queued (already claimed, finished or cancelled)"
    attempt = job.attempts
    from classifier.config import TrainConfig
    from classifier.errors import ClassifierError, TrainingCancelled
    from classifier.train import train

    config = TrainConfig.from_dict(job.config)
    heartbeat = _Heartbeat(
        f"job-{job_id}",
        partial(services.training_job_progress, job_id=job_id, attempt=attempt),
        interval=_heartbeat_interval(),
    )
    heartbeat.start()
    staged = _staging_dir(job_id, attempt)
    # This attempt's folder, and those of earlier attempts killed after their export (they
    # never reached training_job_succeed): nothing will move them into place now.
    for leftover in _staging_root().glob(f"job-{job_id}-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    staged.parent.mkdir(parents=True, exist_ok=True)
    checkpoints = _checkpoint_dir(job_id)
    try:
        result = train(
            job.dataset.path,
            config,
            out_dir=staged,
            cache_dir=Path(settings.GRAFT_DATA_DIR) / "cache",
            checkpoint_dir=checkpoints,
            callbacks=_job_callbacks(job_id, attempt, heartbeat, job.epochs_total),
        )
        heartbeat.stop()
        version = services.training_job_succeed(
            job_id=job_id, attempt=attempt, staged_dir=staged, result=result.to_dict()
        )
    except TrainingCancelled:
        services.training_job_mark_cancelled(job_id=job_id, attempt=attempt)
        outcome = "cancelled"
    except ClassifierError as exc:
        log.warning("Job %s failed: %s", job_id, exc)
        services.training_job_fail(job_id=job_id, attempt=attempt, error=str(exc))
        outcome = "failed"
    except SoftTimeLimitExceeded:
        services.training_job_fail(
            job_id=job_id,
            attempt=attempt,
            error=f"The job ran longer than the limit of {settings.GRAFT_TRAINING_TIME_LIMIT} s "
            "(GRAFT_TRAINING_TIME_LIMIT) and was stopped.",
        )
        outcome = "failed"
    except Exception as exc:
        log.exception("Job %s failed unexpectedly", job_id)
        services.training_job_fail(
            job_id=job_id,
            attempt=attempt,
            error=f"Training failed unexpectedly: {type(exc).__name__}: {exc}. "
            "The worker log has the details.",
        )
        outcome = "failed"
    else:
        outcome = f"succeeded: v{version.number}" if version else "finished after cancel"
    finally:
        heartbeat.stop()
        shutil.rmtree(staged, ignore_errors=True)
    job.refresh_from_db(fields=["status", "attempts"])
    if job.is_finished:  # else requeued meanwhile: its retry resumes from the checkpoints
        shutil.rmtree(checkpoints, ignore_errors=True)
    if job.attempts != attempt or not job.is_finished:
        log.warning("Job %s: attempt %s was requeued meanwhile; stopped", job_id, attempt)
        return f"stopped: attempt {attempt} was requeued meanwhile"
    return outcome


@shared_task(name="worker.tasks.quantize_version", acks_late=True, reject_on_worker_lost=True)
def quantize_version(version_id: int, force: bool = False) -> str:
    """Make a version's int8 copy (``GRAFT_INT8``) and record whether it was accepted.

    A redelivered message finds the record and does nothing (unless ``force``); a version
    that cannot be quantized gets a record saying why instead of a retry.
    """
    version = services.model_version_quantize(version_id=version_id, force=force)
    if version is None:
        return "skipped: the version no longer exists"
    record = version.int8
    if record.get("accepted"):
        return f"{version}: int8 accepted"
    return f"{version}: int8 not accepted: {record.get('reason', '')}"


@shared_task(name="worker.tasks.reconcile_jobs")
def reconcile_jobs() -> dict:
    """Requeue training jobs, batches and dataset imports whose worker died; re-enqueue what
    the broker lost; re-enqueue int8 quantizations whose worker died."""
    return {
        "training": services.training_jobs_reconcile(),
        "batches": services.batches_reconcile(),
        "datasets": services.datasets_reconcile(),
        "int8": services.int8_quantizations_reconcile(),
    }


@shared_task(name="worker.tasks.classify_batch", acks_late=True)
def classify_batch(batch_id: int) -> str:
    """Classify an uploaded batch of photos with the version it was started with; a
    duplicate message, or one for a batch another attempt holds, is skipped."""
    batch = services.batch_run(batch_id=batch_id)
    return "skipped" if batch is None else batch.status


@shared_task(name="worker.tasks.remove_stale_exports")
def remove_stale_exports() -> list[str]:
    """Delete what killed training children left in the staging folder.

    A SIGKILLed child (out of memory, hard time limit) leaves its ``.job-N-A.tmp-*``
    export temporary, tens of MB, behind for good; one killed between its export and
    ``training_job_succeed`` leaves a whole staged version ``job-N-A`` that no attempt will
    move into place (a retry of the job removes it when it starts; a job that is not
    retried never would). Both are removed once untouched for ``STALE_EXPORT_SECONDS``;
    the staged folder of a running job's current attempt is always kept. A job that ended
    without its worker (failed by the reconcile after its last lost attempt, or cancelled
    meanwhile) also leaves its ``checkpoints/job-N``; those go once the job is neither
    queued nor running. Run hourly from beat rather than from the reconcile: this task
    imports ``classifier.export``, and so TensorFlow, a few seconds.
    """
    from classifier.export import remove_stale_temporaries

    removed = remove_stale_temporaries(_staging_root(), STALE_EXPORT_SECONDS)
    removed += _remove_orphaned_staged_versions()
    removed += _remove_orphaned_checkpoints()
    for path in removed:
        log.info("Removed the stale export folder %s", path)
    return [str(path) for path in removed]


def _remove_orphaned_staged_versions() -> list[Path]:
    running = selectors.running_training_attempts()
    cutoff = time.time() - STALE_EXPORT_SECONDS
    removed = []
    for folder in _staging_root().glob("job-*-*"):
        match = STAGED_NAME.fullmatch(folder.name)
        if match is None or (int(match[1]), int(match[2])) in running:
            continue
        try:
            if folder.is_symlink() or folder.stat().st_mtime > cutoff:
                continue
            shutil.rmtree(folder)
        except FileNotFoundError:  # moved into place or removed meanwhile
            continue
        removed.append(folder)
    return removed


def _remove_orphaned_checkpoints() -> list[Path]:
    """Checkpoint folders of jobs that will not resume (finished or deleted)."""
    root = _checkpoint_dir(0).parent
    folders = [f for f in root.glob("job-*") if CHECKPOINT_NAME.fullmatch(f.name)]
    if not folders:
        return []
    resumable = selectors.unfinished_training_job_ids()
    removed = []
    for folder in folders:
        if int(CHECKPOINT_NAME.fullmatch(folder.name)[1]) in resumable or folder.is_symlink():
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


@shared_task(name="worker.tasks.prune_predictions")
def prune_predictions() -> dict:
    """Enforce GRAFT_PREDICTION_RETENTION_DAYS on the prediction log and batch results."""
    return services.predictions_prune()
