"""Writes: every change to Graft's rows goes through a keyword-only function here.

Views, the API, management commands and Celery tasks are interfaces that call these.
Status transitions are conditional updates, so two callers racing cannot both win.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import UploadedFile
from django.db import IntegrityError, transaction
from django.db.models import F, Max
from django.utils import timezone
from django.utils.text import slugify

from classifier.config import TrainConfig
from classifier.errors import DatasetError
from webapp import dataset_files
from webapp.models import (
    ActivationEvent,
    Dataset,
    EpochRecord,
    ModelVersion,
    Project,
    TrainingJob,
)

log = logging.getLogger(__name__)


class QueueUnavailable(Exception):
    """The broker or every worker is down, so a job could not be started."""


class NoActiveVersion(Exception):
    """The project has no active model version to classify with."""


def project_create(
    *, name: str, description: str = "", user: AbstractBaseUser | None = None
) -> Project:
    """Create a project with a unique slug derived from its name."""
    name = name.strip()
    base = slugify(name)[:90]
    if not base:
        raise ValidationError({"name": "Use at least one letter or digit in the name."})
    slug, n = base, 2
    while Project.objects.filter(slug=slug).exists():
        slug, n = f"{base}-{n}", n + 1
    return Project.objects.create(name=name, slug=slug, description=description, created_by=user)


@transaction.atomic
def model_version_activate(
    *,
    version: ModelVersion,
    user: AbstractBaseUser | None = None,
    action: str = ActivationEvent.Action.ACTIVATE,
    note: str = "",
) -> ModelVersion:
    """Make ``version`` its project's active version and record who did it.

    The project row is locked so two activations in one project serialise; the database
    constraint ``one_active_version_per_project`` is the last line of defence.
    """
    Project.objects.select_for_update().get(pk=version.project_id)
    previous = ModelVersion.objects.filter(project_id=version.project_id, is_active=True).first()
    if previous and previous.pk == version.pk:
        return version
    if previous:
        ModelVersion.objects.filter(pk=previous.pk).update(is_active=False)
    now = timezone.now()
    try:
        with transaction.atomic():
            ModelVersion.objects.filter(pk=version.pk).update(is_active=True, activated_at=now)
    except IntegrityError as exc:  # pragma: no cover - guarded by the lock above
        raise ValidationError("Another version was activated at the same time.") from exc
    ActivationEvent.objects.create(
        project_id=version.project_id,
        version=version,
        version_number=version.number,
        previous_number=previous.number if previous else None,
        action=action,
        user=user,
        note=note,
    )
    version.refresh_from_db()
    return version


@transaction.atomic
def model_version_rollback(
    *, project: Project, user: AbstractBaseUser | None = None
) -> ModelVersion:
    """Re-activate the version that was active before the current one (from the audit log)."""
    current = ModelVersion.objects.filter(project=project, is_active=True).first()
    if current is None:
        raise ValidationError("There is no active version to roll back from.")
    event = (
        ActivationEvent.objects.filter(
            project=project,
            version_number=current.number,
            action__in=[ActivationEvent.Action.ACTIVATE, ActivationEvent.Action.ROLLBACK],
            previous_number__isnull=False,
        )
        .order_by("-created_at", "-id")
        .first()
    )
    previous = (
        ModelVersion.objects.filter(project=project, number=event.previous_number).first()
        if event
        else None
    )
    if previous is None:
        raise ValidationError(
            "There is no earlier active version (still available) to roll back to."
        )
    return model_version_activate(
        version=previous,
        user=user,
        action=ActivationEvent.Action.ROLLBACK,
        note=f"rolled back from v{current.number}",
    )


@transaction.atomic
def model_version_delete(*, version: ModelVersion, user: AbstractBaseUser | None = None) -> None:
    """Retire a version: remove its row and artifacts. The active version cannot be deleted."""
    version = ModelVersion.objects.select_for_update().get(pk=version.pk)
    if version.is_active:
        raise ValidationError(
            "The active version cannot be deleted; activate another version first."
        )
    ActivationEvent.objects.create(
        project_id=version.project_id,
        version=None,
        version_number=version.number,
        action=ActivationEvent.Action.DELETE,
        user=user,
    )
    path = version.path
    version.delete()
    transaction.on_commit(partial(shutil.rmtree, path, ignore_errors=True))


# --- Datasets -------------------------------------------------------------------------


def _limits() -> dataset_files.Limits:
    return dataset_files.Limits(
        max_file_bytes=settings.GRAFT_MAX_IMAGE_MB * 2**20,
        max_total_bytes=settings.GRAFT_MAX_UNZIPPED_MB * 2**20,
        max_files=settings.GRAFT_MAX_ZIP_FILES,
    )


def _dataset_new(
    *,
    project: Project,
    name: str,
    source: str,
    source_detail: str = "",
    user: AbstractBaseUser | None,
    status: str = Dataset.Status.IMPORTING,
) -> Dataset:
    name = name.strip()
    if not name:
        raise ValidationError({"name": "Give the dataset a name."})
    if Dataset.objects.filter(project=project, name=name).exists():
        raise ValidationError({"name": f"This project already has a dataset named “{name}”."})
    dataset = Dataset.objects.create(
        project=project,
        name=name,
        source=source,
        source_detail=source_detail,
        status=status,
        created_by=user,
    )
    dataset.directory = f"datasets/{project.slug}/{dataset.pk}"
    dataset.save(update_fields=["directory"])
    return dataset


def _enqueue_import(dataset_id: int) -> None:
    from worker.tasks import import_dataset

    import_dataset.apply_async(args=[dataset_id], queue="default")


def dataset_create_empty(
    *, project: Project, name: str, user: AbstractBaseUser | None = None
) -> Dataset:
    """A dataset to fill class by class with :func:`dataset_add_images`."""
    dataset = _dataset_new(
        project=project,
        name=name,
        source=Dataset.Source.UPLOAD,
        user=user,
        status=Dataset.Status.READY,
    )
    dataset.path.mkdir(parents=True, exist_ok=True)
    return dataset


def dataset_import_zip(
    *,
    project: Project,
    name: str,
    upload: UploadedFile | Path,
    user: AbstractBaseUser | None = None,
    background: bool = True,
) -> Dataset:
    """Keep the uploaded zip and import it (on the ``default`` queue unless not ``background``)."""
    size = upload.size if isinstance(upload, UploadedFile) else Path(upload).stat().st_size
    if size > settings.GRAFT_MAX_ZIP_MB * 2**20:
        raise ValidationError(
            {"archive": f"The zip is larger than the limit of {settings.GRAFT_MAX_ZIP_MB} MB."}
        )
    with transaction.atomic():
        dataset = _dataset_new(project=project, name=name, source=Dataset.Source.ZIP, user=user)
        incoming = Path(settings.GRAFT_DATA_DIR) / "incoming"
        incoming.mkdir(parents=True, exist_ok=True)
        target = incoming / f"dataset-{dataset.pk}.zip"
        if isinstance(upload, UploadedFile):
            with open(target, "wb") as out:
                for chunk in upload.chunks():
                    out.write(chunk)
            dataset.source_detail = upload.name or "upload.zip"
        else:
            shutil.copyfile(upload, target)
            dataset.source_detail = Path(upload).name
        dataset.save(update_fields=["source_detail"])
        if background:
            transaction.on_commit(partial(_enqueue_import, dataset.pk))
    if not background:
        dataset = dataset_run_import(dataset_id=dataset.pk)
    return dataset


def dataset_import_directory(
    *,
    project: Project,
    name: str,
    source_dir: str | Path,
    user: AbstractBaseUser | None = None,
    background: bool = True,
    allowed_roots: list[Path] | None = None,
) -> Dataset:
    """Copy a server folder of class folders in. ``allowed_roots`` limits which folders
    (web users get ``GRAFT_IMPORT_ROOTS``; the command line may import any folder)."""
    source = Path(source_dir).expanduser().resolve()
    if allowed_roots is not None and not any(
        source.is_relative_to(Path(root).resolve()) for root in allowed_roots
    ):
        raise ValidationError(
            {"path": "That folder is outside the folders this server allows imports from."}
        )
    if not source.is_dir():
        raise ValidationError({"path": f"{source} is not a folder on the server."})
    with transaction.atomic():
        dataset = _dataset_new(
            project=project,
            name=name,
            source=Dataset.Source.DIRECTORY,
            source_detail=str(source),
            user=user,
        )
        if background:
            transaction.on_commit(partial(_enqueue_import, dataset.pk))
    if not background:
        dataset = dataset_run_import(dataset_id=dataset.pk)
    return dataset


def dataset_import_url(
    *,
    project: Project,
    name: str,
    url: str = dataset_files.FLOWERS_URL,
    user: AbstractBaseUser | None = None,
    background: bool = True,
) -> Dataset:
    """Download a zip or tar of class folders (default: TensorFlow's flower_photos.tgz)."""
    if not url.startswith(("https://", "http://")):
        raise ValidationError({"url": "Use an http:// or https:// address."})
    with transaction.atomic():
        dataset = _dataset_new(
            project=project, name=name, source=Dataset.Source.URL, source_detail=url, user=user
        )
        if background:
            transaction.on_commit(partial(_enqueue_import, dataset.pk))
    if not background:
        dataset = dataset_run_import(dataset_id=dataset.pk)
    return dataset


def dataset_run_import(*, dataset_id: int) -> Dataset:
    """Do the file work of an import (the task body): stage, scan, move in, mark ready.

    Idempotent: a dataset that is no longer importing is returned unchanged. On any refusal
    the dataset is marked failed with the reason and nothing stays on disk.
    """
    dataset = Dataset.objects.get(pk=dataset_id)
    if dataset.status != Dataset.Status.IMPORTING:
        return dataset
    final = dataset.path
    staging = dataset_files.staging_dir(final)
    incoming = Path(settings.GRAFT_DATA_DIR) / "incoming" / f"dataset-{dataset.pk}.zip"
    try:
        report = _stage(dataset, staging, incoming)
        scan = _scan(staging)
        dataset_files.remove_files(staging, (path for path, _ in scan.rejected))
        dataset_files.move_into_place(staging, final)
    except (dataset_files.ImportRefused, DatasetError) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        return _dataset_fail(dataset, str(exc))
    except Exception as exc:
        log.exception("Import of dataset %s failed", dataset.pk)
        shutil.rmtree(staging, ignore_errors=True)
        return _dataset_fail(dataset, f"The import failed unexpectedly: {exc}")
    finally:
        incoming.unlink(missing_ok=True)
    rejected = [{"path": p, "reason": r} for p, r in [*report.rejected, *scan.rejected]]
    Dataset.objects.filter(pk=dataset.pk, status=Dataset.Status.IMPORTING).update(
        status=Dataset.Status.READY,
        error="",
        class_counts=scan.counts(),
        image_count=len(scan.items),
        total_bytes=scan.total_bytes,
        fingerprint=scan.fingerprint,
        rejected=rejected[:1000],
        updated_at=timezone.now(),
    )
    dataset.refresh_from_db()
    return dataset


def _stage(dataset: Dataset, staging: Path, incoming: Path) -> dataset_files.ImportReport:
    limits = _limits()
    if dataset.source == Dataset.Source.ZIP:
        return dataset_files.extract_zip(incoming, staging, limits)
    if dataset.source == Dataset.Source.DIRECTORY:
        return dataset_files.copy_directory(Path(dataset.source_detail), staging, limits)
    if dataset.source == Dataset.Source.URL:
        with tempfile.TemporaryDirectory(dir=staging.parent) as tmp:
            archive = dataset_files.download(
                dataset.source_detail,
                Path(tmp) / "download",
                max_bytes=settings.GRAFT_MAX_ZIP_MB * 2**20,
            )
            if zipfile_like(archive):
                return dataset_files.extract_zip(archive, staging, limits)
            return dataset_files.extract_tar(archive, staging, limits)
    raise dataset_files.ImportRefused(f"Datasets from {dataset.source} are not imported here.")


def zipfile_like(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(4) == b"PK\x03\x04"


def _scan(root: Path):  # -> classifier.data.DatasetScan
    from classifier.data import scan_dataset

    return scan_dataset(root, min_images_per_class=1)


def _dataset_fail(dataset: Dataset, error: str) -> Dataset:
    Dataset.objects.filter(pk=dataset.pk).update(
        status=Dataset.Status.FAILED, error=error, updated_at=timezone.now()
    )
    dataset.refresh_from_db()
    return dataset


def dataset_add_images(
    *,
    dataset: Dataset,
    class_name: str,
    files: list[tuple[str, bytes]],
    user: AbstractBaseUser | None = None,
) -> dataset_files.ImportReport:
    """Add photos to one class of a ready dataset (creating the class), then rescan it."""
    if dataset.status != Dataset.Status.READY:
        raise ValidationError("Photos can only be added to a ready dataset.")
    try:
        class_name = dataset_files.validate_class_name(class_name)
    except dataset_files.ImportRefused as exc:
        raise ValidationError({"class_name": str(exc)}) from None
    report = dataset_files.ImportReport()
    dataset_files.write_uploads(files, dataset.path / class_name, _limits(), report)
    dataset_refresh(dataset=dataset)
    return report


def dataset_refresh(*, dataset: Dataset) -> Dataset:
    """Recount a dataset from disk (classes, counts, bytes, fingerprint)."""
    from classifier.data import scan_dataset

    root = dataset.path
    classes = [p for p in root.iterdir() if p.is_dir()] if root.exists() else []
    if len(classes) < 2:
        counts = {p.name: sum(1 for f in p.rglob("*") if f.is_file()) for p in classes}
        Dataset.objects.filter(pk=dataset.pk).update(
            class_counts=counts, image_count=sum(counts.values()), updated_at=timezone.now()
        )
    else:
        scan = scan_dataset(root, min_images_per_class=0, check_images=False)
        Dataset.objects.filter(pk=dataset.pk).update(
            class_counts=scan.counts(),
            image_count=len(scan.items),
            total_bytes=scan.total_bytes,
            fingerprint=scan.fingerprint,
            updated_at=timezone.now(),
        )
    dataset.refresh_from_db()
    return dataset


# --- Training jobs --------------------------------------------------------------------


def _check_queue() -> None:
    from webapp.health import check_broker, check_workers

    broker = check_broker(timeout=2.0)
    if not broker["ok"]:
        raise QueueUnavailable(f"The job queue is unavailable: {broker['error']}.")
    workers = check_workers(timeout=1.0)
    if not workers["ok"]:
        raise QueueUnavailable(
            "No training worker is running, so the job would never start. Start one with "
            "`celery -A worker worker` (or `make run`)."
        )


def _enqueue_training(job_id: int) -> None:
    from worker.tasks import train_job

    result = train_job.apply_async(args=[job_id], queue="training")
    TrainingJob.objects.filter(pk=job_id).update(celery_task_id=result.id)


def training_job_create(
    *,
    project: Project,
    dataset: Dataset,
    config: dict[str, Any] | TrainConfig | None = None,
    user: AbstractBaseUser | None = None,
    activate_on_success: bool = False,
    check_queue: bool = True,
) -> TrainingJob:
    """Validate a training request against its dataset and enqueue it (on commit, by id).

    Raises:
        ValidationError: the dataset is not ready or not this project's, the config is
            invalid, or the dataset cannot be trained on (classes, image counts).
        QueueUnavailable: the broker is down or no worker answers (``check_queue``).
    """
    if dataset.project_id != project.pk:
        raise ValidationError({"dataset": "That dataset belongs to another project."})
    if dataset.status != Dataset.Status.READY:
        raise ValidationError({"dataset": f"The dataset is {dataset.get_status_display()}."})
    if isinstance(config, TrainConfig):
        train_config = config
    else:
        try:
            train_config = TrainConfig.from_dict(config or {})
        except (TypeError, ValueError) as exc:
            raise ValidationError({"config": str(exc)}) from None
    _validate_dataset_for(dataset, train_config)
    if check_queue:
        _check_queue()
    with transaction.atomic():
        job = TrainingJob.objects.create(
            project=project,
            dataset=dataset,
            config=train_config.to_dict(),
            activate_on_success=activate_on_success,
            max_attempts=settings.GRAFT_JOB_MAX_ATTEMPTS,
            epochs_total=train_config.epochs
            + (train_config.fine_tune_epochs if train_config.fine_tunes else 0),
            created_by=user,
        )
        transaction.on_commit(partial(_enqueue_training, job.pk))
    return job


def _validate_dataset_for(dataset: Dataset, config: TrainConfig) -> None:
    counts = dataset.class_counts or {}
    usable = {name: n for name, n in counts.items() if n > 0}
    if len(usable) < 2:
        raise ValidationError(
            {
                "dataset": f"The dataset has only {len(usable)} class with images; "
                "a classifier needs at least two."
            }
        )
    needed = max(config.min_images_per_class, 2)
    short = sorted(name for name, n in usable.items() if n < needed)
    if short:
        raise ValidationError(
            {
                "dataset": f"Every class needs at least {needed} images (one for validation); "
                f"too few in: {', '.join(short)}."
            }
        )


def training_job_cancel(*, job: TrainingJob, user: AbstractBaseUser | None = None) -> TrainingJob:
    """Cancel at once when queued; ask a running job to stop at its next batch."""
    now = timezone.now()
    if TrainingJob.objects.filter(pk=job.pk, status=TrainingJob.Status.QUEUED).update(
        status=TrainingJob.Status.CANCELLED,
        cancel_requested=True,
        finished_at=now,
        error="Cancelled before it started.",
    ):
        job.refresh_from_db()
        return job
    if not TrainingJob.objects.filter(pk=job.pk, status=TrainingJob.Status.RUNNING).update(
        cancel_requested=True
    ):
        job.refresh_from_db()
        raise ValidationError(f"The job has already {job.get_status_display().lower()}.")
    job.refresh_from_db()
    return job


def training_job_claim(*, job_id: int, worker: str = "") -> TrainingJob | None:
    """Queued -> running, exactly once: a duplicate or redelivered message gets None."""
    now = timezone.now()
    claimed = TrainingJob.objects.filter(
        pk=job_id, status=TrainingJob.Status.QUEUED, cancel_requested=False
    ).update(
        status=TrainingJob.Status.RUNNING,
        attempts=F("attempts") + 1,
        started_at=now,
        heartbeat_at=now,
        worker=worker[:200],
        phase="starting",
        error="",
    )
    return TrainingJob.objects.get(pk=job_id) if claimed == 1 else None


def training_job_progress(*, job_id: int, **fields: Any) -> bool:
    """Write progress and a heartbeat; return True when a cancel has been requested."""
    allowed = {
        "phase",
        "epoch",
        "epochs_total",
        "batch",
        "batches_total",
        "progress",
        "eta_seconds",
    }
    updates = {k: v for k, v in fields.items() if k in allowed}
    TrainingJob.objects.filter(pk=job_id, status=TrainingJob.Status.RUNNING).update(
        heartbeat_at=timezone.now(), **updates
    )
    return TrainingJob.objects.filter(pk=job_id, cancel_requested=True).exists()


def training_job_record_epoch(*, job_id: int, epoch: int, logs: dict[str, Any]) -> None:
    def number(key: str) -> float | None:
        value = logs.get(key)
        return float(value) if value is not None else None

    EpochRecord.objects.update_or_create(
        job_id=job_id,
        epoch=epoch,
        defaults={
            "phase": str(logs.get("phase", "")),
            "loss": number("loss"),
            "accuracy": number("accuracy"),
            "val_loss": number("val_loss"),
            "val_accuracy": number("val_accuracy"),
            "learning_rate": number("learning_rate"),
            "seconds": number("seconds"),
        },
    )


def training_job_fail(*, job_id: int, error: str) -> bool:
    return bool(
        TrainingJob.objects.filter(pk=job_id, status=TrainingJob.Status.RUNNING).update(
            status=TrainingJob.Status.FAILED,
            error=error,
            finished_at=timezone.now(),
            eta_seconds=None,
        )
    )


def training_job_mark_cancelled(*, job_id: int) -> bool:
    return bool(
        TrainingJob.objects.filter(pk=job_id, status=TrainingJob.Status.RUNNING).update(
            status=TrainingJob.Status.CANCELLED,
            error="Cancelled while running.",
            finished_at=timezone.now(),
            eta_seconds=None,
        )
    )


def training_job_succeed(
    *, job_id: int, staged_dir: Path, result: dict[str, Any]
) -> ModelVersion | None:
    """Turn a finished job into the project's next numbered version, in one transaction.

    ``staged_dir`` is the exported version directory (complete, written atomically by
    ``classifier.export``) on the same filesystem; it is renamed to
    ``models/<project>/v<N>``. When the job is no longer running (cancelled or reclaimed
    meanwhile) nothing is created and the staged files are removed.
    """
    with transaction.atomic():
        job = TrainingJob.objects.select_for_update().select_related("project").get(pk=job_id)
        if job.status != TrainingJob.Status.RUNNING:
            shutil.rmtree(staged_dir, ignore_errors=True)
            return None
        project = Project.objects.select_for_update().get(pk=job.project_id)
        number = (project.versions.aggregate(n=Max("number"))["n"] or 0) + 1
        relative = f"models/{project.slug}/v{number}"
        final = Path(settings.GRAFT_DATA_DIR) / relative
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():  # left by a crash between rename and commit
            shutil.rmtree(final)

        metadata = json.loads((staged_dir / "metadata.json").read_text())
        files = metadata.get("files", {})
        metrics = result.get("metrics") or metadata.get("metrics") or {}
        os.rename(staged_dir, final)
        try:
            version = ModelVersion.objects.create(
                project=project,
                number=number,
                job=job,
                dataset=job.dataset,
                dataset_fingerprint=result.get("fingerprint", ""),
                directory=relative,
                files=files,
                size_bytes=sum(p.stat().st_size for p in final.iterdir() if p.is_file()),
                class_names=result.get("class_names", []),
                image_size=job.config.get("image_size", 224),
                config=job.config,
                metrics=metrics,
                val_accuracy=metrics.get("accuracy"),
                val_loss=metrics.get("loss"),
            )
            TrainingJob.objects.filter(pk=job.pk).update(
                status=TrainingJob.Status.SUCCEEDED,
                finished_at=timezone.now(),
                progress=1.0,
                eta_seconds=None,
                phase="done",
                dataset_fingerprint=result.get("fingerprint", ""),
                train_files=result.get("train_files", []),
                val_files=result.get("val_files", []),
            )
            first = not ModelVersion.objects.filter(project=project).exclude(pk=version.pk).exists()
            if first or job.activate_on_success:
                model_version_activate(
                    version=version,
                    user=job.created_by,
                    note="first version" if first else f"activated on success of job {job.pk}",
                )
        except BaseException:
            os.rename(final, staged_dir)
            raise
    return version


def training_jobs_reconcile(*, now: Any = None) -> dict[str, list[int]]:
    """Find jobs that a dead worker or a lost broker message left behind, and fix them.

    - running, heartbeat older than ``GRAFT_HEARTBEAT_TIMEOUT``: back to queued and
      re-enqueued (it resumes from its last per-epoch checkpoint) while attempts remain,
      else failed with a message saying so;
    - queued for longer than the timeout and not waiting in the broker: re-enqueued.
    Re-enqueuing is safe because claims are conditional: a duplicate message does nothing.
    """
    from datetime import timedelta

    now = now or timezone.now()
    stale_before = now - timedelta(seconds=settings.GRAFT_HEARTBEAT_TIMEOUT)
    report: dict[str, list[int]] = {"requeued": [], "failed": [], "reenqueued": []}
    stale = TrainingJob.objects.filter(
        status=TrainingJob.Status.RUNNING, heartbeat_at__lt=stale_before
    )
    for job in stale:
        if job.cancel_requested:
            TrainingJob.objects.filter(pk=job.pk, status=TrainingJob.Status.RUNNING).update(
                status=TrainingJob.Status.CANCELLED,
                finished_at=now,
                error="Cancelled; its worker stopped before it could finish.",
            )
        elif job.attempts < job.max_attempts:
            if TrainingJob.objects.filter(
                pk=job.pk, status=TrainingJob.Status.RUNNING, heartbeat_at__lt=stale_before
            ).update(
                status=TrainingJob.Status.QUEUED,
                phase="requeued",
                error=f"Attempt {job.attempts} was lost (its worker stopped answering); retrying.",
            ):
                report["requeued"].append(job.pk)
                transaction.on_commit(partial(_enqueue_training, job.pk))
        elif TrainingJob.objects.filter(pk=job.pk, status=TrainingJob.Status.RUNNING).update(
            status=TrainingJob.Status.FAILED,
            finished_at=now,
            eta_seconds=None,
            error=f"The worker running this job stopped answering on each of its "
            f"{job.attempts} attempts (last heartbeat {job.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC). "
            "Check the worker machines' memory and logs, then start the job again.",
        ):
            report["failed"].append(job.pk)
    waiting = TrainingJob.objects.filter(
        status=TrainingJob.Status.QUEUED,
        cancel_requested=False,
        created_at__lt=stale_before,
    ).exclude(pk__in=report["requeued"])
    if waiting.exists():
        known = _broker_task_ids()
        for job in waiting:
            if known is not None and job.celery_task_id and job.celery_task_id in known:
                continue
            report["reenqueued"].append(job.pk)
            transaction.on_commit(partial(_enqueue_training, job.pk))
    return report


def _broker_task_ids() -> set[str] | None:
    """Task ids waiting in, or reserved from, the Redis ``training`` queue (None: unknown)."""
    from worker import app

    try:
        with app.connection_for_write() as conn:
            client = conn.default_channel.client
            ids: set[str] = set()
            for raw in client.lrange("training", 0, -1):
                ids.add(json.loads(raw)["headers"]["id"])
            for raw in client.hvals("unacked"):
                message = json.loads(raw)[0]
                ids.add(message["headers"]["id"])
            return ids
    except Exception:
        log.warning("Could not list the broker's queued tasks", exc_info=True)
        return None
