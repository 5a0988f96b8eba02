"""Writes: every change to Graft's rows goes through a keyword-only function here.

Views, the API, management commands and Celery tasks are interfaces that call these.
Status transitions are conditional updates, so two callers racing cannot both win.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import UploadedFile
from django.db import IntegrityError, transaction
from django.db.models import Case, F, Max, Q, QuerySet, RestrictedError, Value, When
from django.utils import timezone
from django.utils.text import slugify

from classifier.config import TrainConfig
from classifier.errors import ClassifierError, DatasetError, InvalidImageError
from classifier.files import quantize_lock_path
from classifier.images import SUPPORTED_SUFFIXES
from webapp import dataset_files, selectors
from webapp.models import (
    ActivationEvent,
    BatchClassification,
    Dataset,
    EpochRecord,
    ModelVersion,
    Prediction,
    Project,
    TrainingJob,
)

log = logging.getLogger(__name__)


class QueueUnavailable(Exception):
    """The broker or every worker is down, so a job could not be started."""


class NoActiveVersion(Exception):
    """The project has no active model version to classify with."""


class WrongStatus(Exception):
    """The row's status does not allow the action (cancel a finished batch, delete a running
    one); the message says what it is instead."""


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


def project_delete(*, project: Project, user: AbstractBaseUser | None = None) -> None:
    """Delete a project with everything in it: its rows (by cascade), then its files.

    The files are each dataset's folder with its import leftovers and scan hash cache,
    each version's folder, each batch's folder, the photos kept for its predictions and
    its jobs' checkpoints; a folder another project's row also names stays. The rows go in
    a transaction (the project row locked, as a finishing job locks it to add a version)
    and the files only after it commits, so a refusal keeps everything.

    Raises:
        ValidationError: an import, training job or batch of the project is under way
            (its worker writes into the project's folders).
    """
    with transaction.atomic():
        project = Project.objects.select_for_update().filter(pk=project.pk).first()
        if project is None:
            return  # deleted meanwhile, by someone else
        refusal = selectors.project_delete_refusal(project=project)
        if refusal:
            raise ValidationError(refusal)
        project_id, slug = project.pk, project.slug
        datasets = [Dataset(pk=row, directory=d) for row, d in _rows(project.datasets)]
        versions = [d for _, d in _rows(project.versions)]
        batches = list(_rows(project.batches))
        images = list(
            project.predictions.exclude(image="").values_list("image", flat=True).iterator()
        )
        jobs = list(project.jobs.values_list("pk", flat=True))
        project.delete()
        in_use = _directories_in_use()
        transaction.on_commit(
            partial(
                _project_files_remove,
                slug=slug,
                datasets=[d for d in datasets if d.directory not in in_use],
                versions=[d for d in versions if d not in in_use],
                batches=[(row, d) for row, d in batches if d not in in_use],
                images=images,
                jobs=jobs,
            )
        )
    log.info("Project %s (%s): deleted by %s", project_id, slug, _username(user))


def _rows(related: QuerySet) -> QuerySet:
    return related.values_list("pk", "directory")


def _directories_in_use() -> set[str]:
    """Every folder a dataset, version or batch row names (relative to the data root)."""
    return {
        directory
        for model in (Dataset, ModelVersion, BatchClassification)
        for directory in model.objects.values_list("directory", flat=True)
    }


def _project_files_remove(
    *,
    slug: str,
    datasets: list[Dataset],
    versions: list[str],
    batches: list[tuple[int, str]],
    images: list[str],
    jobs: list[int],
) -> None:
    """Remove a deleted project's files (see :func:`project_delete`), then its
    ``datasets/<slug>`` and ``models/<slug>`` folders once they are empty."""
    from worker.tasks import _checkpoint_dir

    for dataset in datasets:
        _dataset_files_remove(dataset)
    for directory in versions:
        _version_files_remove(directory)
    for batch_id, directory in batches:
        _batch_folder_remove(batch_id, directory)
    for name in images:
        default_storage.delete(name)
    for job_id in jobs:
        shutil.rmtree(_checkpoint_dir(job_id), ignore_errors=True)
    for parent in ("datasets", "models"):
        with contextlib.suppress(OSError):  # not empty (another project's files), or gone
            (Path(settings.GRAFT_DATA_DIR) / parent / slug).rmdir()


def _version_files_remove(directory: str) -> None:
    """A deleted version's folder, and the int8 quantization lock file beside it."""
    _data_folder_remove(directory)
    quantize_lock_path(Path(settings.GRAFT_DATA_DIR) / directory).unlink(missing_ok=True)


def _data_folder_remove(directory: str) -> None:
    """Remove a folder under ``GRAFT_DATA_DIR`` (never the data root, nothing outside it)."""
    root = Path(settings.GRAFT_DATA_DIR).resolve()
    folder = (root / directory).resolve()
    if folder != root and folder.is_relative_to(root):
        shutil.rmtree(folder, ignore_errors=True)


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
    _check_servable(version, previous)
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


# What serving needs of a version; its int8 copy is optional (a damaged one is not served).
SERVED_FILES = ("metadata.json", "model.tflite", "labels.json")


def _check_servable(version: ModelVersion, previous: ModelVersion | None) -> None:
    """Refuse a version whose files serving would refuse (missing, or not the bytes its
    export recorded), before it replaces ``previous``: activating it would turn every
    classification into an error."""
    from classifier.serving import sha256_file

    files = version.files or {}
    problems = [name for name in SERVED_FILES if not (version.path / name).is_file()]
    for name, entry in sorted(files.items()):
        if name in problems or name == "model.int8.tflite" or not isinstance(entry, dict):
            continue
        try:
            intact = sha256_file(version.path / name) == entry.get("sha256")
        except ClassifierError:
            intact = False
        if not intact:
            problems.append(name)
    if problems:
        kept = f"{previous.label} stays active" if previous else "no version is active"
        raise ValidationError(
            f"{version.label} cannot be activated: its files are missing or damaged "
            f"({', '.join(sorted(problems))} in {version.path}); {kept}."
        )


@transaction.atomic
def model_version_rollback(
    *, project: Project, user: AbstractBaseUser | None = None
) -> ModelVersion:
    """Re-activate the version that was active before the current one (from the audit log)."""
    current = ModelVersion.objects.filter(project=project, is_active=True).first()
    if current is None:
        raise ValidationError("There is no active version to roll back from.")
    previous = selectors.rollback_target(project=project)
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
    directory = version.directory
    version.delete()
    transaction.on_commit(partial(_version_files_remove, directory))


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
        max_attempts=settings.GRAFT_JOB_MAX_ATTEMPTS,
        created_by=user,
    )
    dataset.directory = f"datasets/{project.slug}/{dataset.pk}"
    dataset.save(update_fields=["directory"])
    return dataset


def _enqueue_import(dataset_id: int) -> None:
    from worker.tasks import import_dataset

    result = import_dataset.apply_async(args=[dataset_id], queue="default")
    Dataset.objects.filter(pk=dataset_id).update(celery_task_id=result.id)


def _run_import_here(dataset_id: int) -> Dataset:
    """Run the import task in this process (claim, heartbeat and all), as a worker would."""
    from worker.tasks import import_dataset

    import_dataset.apply(args=[dataset_id], throw=True)
    return Dataset.objects.get(pk=dataset_id)


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
    """Keep the uploaded zip and import it (on the ``default`` queue unless not ``background``).

    Raises:
        ValidationError: the zip is over ``GRAFT_MAX_ZIP_MB`` or the name is taken.
        QueueUnavailable: ``background`` and the broker is down (nothing is created).
    """
    size = upload.size if isinstance(upload, UploadedFile) else Path(upload).stat().st_size
    if size > settings.GRAFT_MAX_ZIP_MB * 2**20:
        raise ValidationError(
            {"archive": f"The zip is larger than the limit of {settings.GRAFT_MAX_ZIP_MB} MB."}
        )
    if background:
        _check_broker()
    with transaction.atomic():
        dataset = _dataset_new(project=project, name=name, source=Dataset.Source.ZIP, user=user)
        target = _incoming(dataset)
        target.parent.mkdir(parents=True, exist_ok=True)
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
        dataset = _run_import_here(dataset.pk)
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
    return _dataset_start_import(
        project=project,
        name=name,
        source=Dataset.Source.DIRECTORY,
        source_detail=str(source),
        user=user,
        background=background,
    )


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
    return _dataset_start_import(
        project=project,
        name=name,
        source=Dataset.Source.URL,
        source_detail=url,
        user=user,
        background=background,
    )


def _dataset_start_import(*, background: bool, **fields: Any) -> Dataset:
    """Create the importing row, then import on the ``default`` queue or right here.

    Raises QueueUnavailable when ``background`` and the broker is down (nothing is created):
    the row would otherwise say "importing" forever.
    """
    if background:
        _check_broker()
    with transaction.atomic():
        dataset = _dataset_new(**fields)
        if background:
            transaction.on_commit(partial(_enqueue_import, dataset.pk))
    return dataset if background else _run_import_here(dataset.pk)


def _incoming(dataset: Dataset) -> Path:
    """Where an uploaded zip waits until an attempt ends its import (kept for retries)."""
    return Path(settings.GRAFT_DATA_DIR) / "incoming" / f"dataset-{dataset.pk}.zip"


def _import_held(dataset: Dataset) -> QuerySet[Dataset]:
    """The dataset's row while this attempt still holds its import."""
    return Dataset.objects.filter(
        pk=dataset.pk, status=Dataset.Status.IMPORTING, attempts=dataset.attempts
    ).exclude(heartbeat_at=None)


def dataset_import_claim(*, dataset_id: int) -> Dataset | None:
    """Importing, held by no attempt -> held by a new one, exactly once: a duplicate or
    redelivered message gets None.

    What a lost earlier attempt left (its staging folder, or the folder it moved in before
    it could mark the dataset ready) is removed, so every attempt starts clean; the
    uploaded zip stays until an attempt ends the import.
    """
    claimed = Dataset.objects.filter(
        pk=dataset_id, status=Dataset.Status.IMPORTING, heartbeat_at=None
    ).update(attempts=F("attempts") + 1, heartbeat_at=timezone.now())
    if claimed != 1:
        return None
    dataset = Dataset.objects.get(pk=dataset_id)
    _import_leftovers_remove(dataset, keep_upload=True)
    return dataset


def dataset_import_beat(*, dataset: Dataset) -> None:
    """Tell the reconcile that this attempt is alive (a worker thread calls it)."""
    _import_held(dataset).update(heartbeat_at=timezone.now())


def dataset_run_import(*, dataset: Dataset) -> Dataset:
    """Do the file work of an import claimed by :func:`dataset_import_claim` (the task
    body): stage, scan, then move in and mark ready in one transaction.

    On any refusal the dataset is marked failed with the reason and nothing stays on disk.
    An attempt that lost its claim meanwhile (the reconcile judged it dead) writes nothing.
    """
    final = dataset.path
    staging = dataset_files.staging_dir(final)
    staged_hashes = _hash_cache(staging)
    try:
        report = _stage(dataset, staging, _incoming(dataset))
        scan = _scan(staging)
        dataset_files.remove_files(staging, (path for path, _ in scan.rejected))
        rejected = [{"path": p, "reason": r} for p, r in [*report.rejected, *scan.rejected]]
        with transaction.atomic():  # the row stays held while its folder moves in
            if not _import_held(dataset).update(
                status=Dataset.Status.READY,
                error="",
                class_counts=scan.counts(),
                image_count=len(scan.items),
                total_bytes=scan.total_bytes,
                fingerprint=scan.fingerprint,
                rejected=rejected[:1000],
                updated_at=timezone.now(),
            ):
                raise _ImportLost
            dataset_files.move_into_place(staging, final)
    except _ImportLost:
        log.warning("Dataset %s: attempt %s was requeued meanwhile", dataset.pk, dataset.attempts)
        shutil.rmtree(staging, ignore_errors=True)
    except (dataset_files.ImportRefused, DatasetError) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        _dataset_fail(dataset, str(exc))
    except Exception as exc:
        log.exception("Import of dataset %s failed", dataset.pk)
        shutil.rmtree(staging, ignore_errors=True)
        _dataset_fail(dataset, f"The import failed unexpectedly: {exc}")
    else:
        _incoming(dataset).unlink(missing_ok=True)
        # The scan's hashes hold for the folder moved in (a rename keeps every photo's
        # size, times and inode): the first job reads them instead of hashing it again.
        with contextlib.suppress(FileNotFoundError):
            os.replace(staged_hashes, _hash_cache(final))
    finally:
        staged_hashes.unlink(missing_ok=True)  # keyed by a folder that is gone
    dataset.refresh_from_db()
    return dataset


class _ImportLost(Exception):
    """This attempt no longer holds the dataset's import (the reconcile requeued it)."""


def _import_leftovers_remove(dataset: Dataset, *, keep_upload: bool) -> None:
    """Remove what an unfinished import left on disk: staging and download folders, the
    folder moved in, and (unless ``keep_upload``) the uploaded zip."""
    root = Path(settings.GRAFT_DATA_DIR).resolve()
    final = dataset.path.resolve()
    if final == root or not final.is_relative_to(root):
        return
    for leftover in final.parent.glob(f".staging-{final.name}-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    shutil.rmtree(final, ignore_errors=True)
    if not keep_upload:
        _incoming(dataset).unlink(missing_ok=True)


def _stage(dataset: Dataset, staging: Path, incoming: Path) -> dataset_files.ImportReport:
    limits = _limits()
    if dataset.source == Dataset.Source.ZIP:
        return dataset_files.extract_zip(incoming, staging, limits)
    if dataset.source == Dataset.Source.DIRECTORY:
        return dataset_files.copy_directory(Path(dataset.source_detail), staging, limits)
    if dataset.source == Dataset.Source.URL:
        with tempfile.TemporaryDirectory(dir=staging.parent, prefix=f"{staging.name}-") as tmp:
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

    return scan_dataset(root, min_images_per_class=1, hash_cache=_hash_cache(root))


def _hash_cache(root: Path) -> Path:
    """The scan hash cache for ``root``, beside the worker's feature cache (same file)."""
    from classifier.data import hash_cache_path

    return hash_cache_path(Path(settings.GRAFT_DATA_DIR) / "cache", root)


def _dataset_fail(dataset: Dataset, error: str) -> None:
    """Fail the import this attempt holds; its uploaded zip is no longer needed."""
    if _import_held(dataset).update(
        status=Dataset.Status.FAILED, error=error, updated_at=timezone.now()
    ):
        _incoming(dataset).unlink(missing_ok=True)


def dataset_add_images(
    *,
    dataset: Dataset,
    class_name: str,
    files: Iterable[tuple[str, bytes]],
    user: AbstractBaseUser | None = None,
) -> dataset_files.ImportReport:
    """Add photos to one class of a ready dataset (creating the class), then rescan it.

    A class name that differs from an existing class only in case ("roses" for "Roses")
    adds to that class, as its folder is spelled, rather than starting a near-duplicate.
    """
    if dataset.status != Dataset.Status.READY:
        raise ValidationError("Photos can only be added to a ready dataset.")
    try:
        class_name = dataset_files.validate_class_name(class_name)
    except dataset_files.ImportRefused as exc:
        raise ValidationError({"class_name": str(exc)}) from None
    class_name = _class_name_spelled(class_name, dataset.class_names)
    report = dataset_files.ImportReport(class_spellings={class_name.casefold(): class_name})
    dataset_files.write_uploads(files, dataset.path / class_name, _limits(), report)
    with transaction.atomic():
        # Judged again, locked, once the photos are on disk (not while they are written, so
        # a long upload never holds the database): a delete that went first, and may have
        # removed the folder meanwhile, would leave them orphaned, so they go too and the
        # upload is refused; a delete that comes later removes them with the rest.
        if not Dataset.objects.select_for_update().filter(pk=dataset.pk).exists():
            _added_photos_remove(dataset, report.paths)
            raise ValidationError(f"Dataset “{dataset.name}” was deleted meanwhile.")
    try:
        dataset_refresh(dataset=dataset)
    except Dataset.DoesNotExist:  # deleted after the check: its delete removes the photos
        raise ValidationError(f"Dataset “{dataset.name}” was deleted meanwhile.") from None
    return report


def _added_photos_remove(dataset: Dataset, paths: list[Path]) -> None:
    """Take back photos written into a dataset deleted meanwhile: the whole folder when
    no other dataset names it (the delete may have run before they were written)."""
    if Dataset.objects.filter(directory=dataset.directory).exists():
        for path in paths:
            path.unlink(missing_ok=True)
    else:
        _dataset_files_remove(Dataset(pk=dataset.pk, directory=dataset.directory))


def dataset_refresh(*, dataset: Dataset) -> Dataset:
    """Recount a dataset from disk (classes, counts, bytes, fingerprint).

    Files unchanged since the last scan are not read again (``scan_dataset``'s hash cache),
    so adding a few photos to a large dataset costs a directory walk, not a re-hash.
    """
    from classifier.data import scan_dataset

    root = dataset.path
    classes = [p for p in root.iterdir() if p.is_dir()] if root.exists() else []
    if len(classes) < 2:
        counts = {p.name: sum(1 for f in p.rglob("*") if f.is_file()) for p in classes}
        Dataset.objects.filter(pk=dataset.pk).update(
            class_counts=counts, image_count=sum(counts.values()), updated_at=timezone.now()
        )
    else:
        scan = scan_dataset(
            root, min_images_per_class=0, check_images=False, hash_cache=_hash_cache(root)
        )
        Dataset.objects.filter(pk=dataset.pk).update(
            class_counts=scan.counts(),
            image_count=len(scan.items),
            total_bytes=scan.total_bytes,
            fingerprint=scan.fingerprint,
            updated_at=timezone.now(),
        )
    dataset.refresh_from_db()
    return dataset


def dataset_delete(*, dataset: Dataset, user: AbstractBaseUser | None = None) -> None:
    """Delete a dataset: its row, then its photos and what its imports left on disk.

    Refused while it imports, while a job is queued or running on it, and while finished
    jobs or versions trained on it (``selectors.dataset_delete_refusal`` says which): that
    history is kept by design, so a version's lineage page still shows its photos and a
    job's file list still names them. Delete those first to delete the dataset.

    The row goes in a transaction (locked, so the refusal is judged on its latest state)
    and the files only after it commits: its folder, staging leftovers, uploaded zip and
    its folder's scan hash cache. A folder another dataset's row names stays, and so does
    the feature cache, which is keyed by photo content and shared by every dataset.

    Raises:
        ValidationError: why it cannot be deleted now, in words; nothing changed.
    """
    with transaction.atomic():
        dataset = Dataset.objects.select_for_update().filter(pk=dataset.pk).first()
        if dataset is None:
            return  # deleted meanwhile, by someone else
        refusal = selectors.dataset_delete_refusal(dataset=dataset)
        if refusal:
            raise ValidationError(refusal)
        files = Dataset(pk=dataset.pk, directory=dataset.directory)
        try:
            dataset.delete()
        except RestrictedError:  # a job was created on it meanwhile
            raise ValidationError(
                f"A training job started on dataset “{dataset.name}” meanwhile; it is kept."
            ) from None
        if not Dataset.objects.filter(directory=files.directory).exists():
            transaction.on_commit(partial(_dataset_files_remove, files))
    log.info("Dataset %s (%s): deleted by %s", files.pk, files.directory, _username(user))


def _dataset_files_remove(dataset: Dataset) -> None:
    """Remove a deleted dataset's files: its folder's scan hash cache, staging leftovers,
    the folder itself and its uploaded zip. ``dataset`` carries the old pk and directory."""
    _hash_cache(dataset.path).unlink(missing_ok=True)
    _import_leftovers_remove(dataset, keep_upload=False)


# --- Training jobs --------------------------------------------------------------------


def _check_queue() -> None:
    _check_broker()
    _check_workers("No training worker is running, so the job would never start.")


def _check_workers(problem: str) -> None:
    from webapp.health import check_workers

    if not check_workers(timeout=1.0)["ok"]:
        raise QueueUnavailable(
            f"{problem} Start one with `celery -A worker worker` (or `make run`)."
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
        PermissionDenied: ``activate_on_success`` from a ``user`` who may not manage
            versions (activating is theirs, not the trainers'; no user: the command line).
        ValidationError: the dataset is not ready or not this project's, the config is
            invalid, or the dataset cannot be trained on (classes, image counts).
        QueueUnavailable: the broker is down or no worker answers (``check_queue``).
    """
    if activate_on_success and user is not None and not user.has_perm("webapp.manage_versions"):
        raise PermissionDenied(
            "Activating the new version needs the permission to manage versions; start the "
            "job without it and ask a version manager to activate the version."
        )
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
    """Cancel at once when queued; ask a running job to stop at its next batch.

    The first request records ``user`` as ``cancelled_by`` (``None``, the system, records
    nobody); asking a running job again is no error and keeps the first canceller.

    Raises:
        WrongStatus: the job has already finished.
    """
    now = timezone.now()
    if TrainingJob.objects.filter(pk=job.pk, status=TrainingJob.Status.QUEUED).update(
        cancelled_by=_first_canceller(TrainingJob, user),
        status=TrainingJob.Status.CANCELLED,
        cancel_requested=True,
        finished_at=now,
        error="Cancelled before it started.",
    ):
        job.refresh_from_db()
        return job
    if not TrainingJob.objects.filter(pk=job.pk, status=TrainingJob.Status.RUNNING).update(
        cancelled_by=_first_canceller(TrainingJob, user), cancel_requested=True
    ):
        job.refresh_from_db()
        raise WrongStatus(
            f"Job #{job.pk} has already {job.get_status_display().lower()}; "
            "there is nothing to cancel."
        )
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


def training_job_progress(*, job_id: int, attempt: int | None = None, **fields: Any) -> bool:
    """Write progress and a heartbeat; return True when the caller should stop: a cancel
    has been requested or, given ``attempt`` (the number its claim got), that attempt no
    longer holds the job.

    The reconcile requeues a job whose worker was silent for longer than
    ``GRAFT_HEARTBEAT_TIMEOUT``; if that worker was alive after all (a long export, say),
    its attempt must leave the row to the next one. So every write of an attempt that
    passes ``attempt`` here, to :func:`training_job_record_epoch`,
    :func:`training_job_fail`, :func:`training_job_mark_cancelled` and
    :func:`training_job_succeed` changes nothing once it has lost its claim.
    """
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
    held = _job_running(job_id, attempt).update(heartbeat_at=timezone.now(), **updates)
    if attempt is not None and not held:
        return True
    return TrainingJob.objects.filter(pk=job_id, cancel_requested=True).exists()


def _job_running(job_id: int, attempt: int | None) -> QuerySet[TrainingJob]:
    """The job's row while it runs and, given ``attempt``, while that attempt holds it."""
    rows = TrainingJob.objects.filter(pk=job_id, status=TrainingJob.Status.RUNNING)
    return rows if attempt is None else rows.filter(attempts=attempt)


def training_job_record_epoch(
    *, job_id: int, epoch: int, logs: dict[str, Any], attempt: int | None = None
) -> None:
    """Record (or replace) a finished epoch; given ``attempt``, only while it holds the job."""

    def number(key: str) -> float | None:
        value = logs.get(key)
        return float(value) if value is not None else None

    with transaction.atomic():
        if attempt is not None and not _job_running(job_id, attempt).select_for_update().exists():
            return
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


def training_job_fail(*, job_id: int, error: str, attempt: int | None = None) -> bool:
    """Running -> failed with ``error``; False (and nothing written) when the job is not
    running or, given ``attempt``, that attempt no longer holds it."""
    return bool(
        _job_running(job_id, attempt).update(
            status=TrainingJob.Status.FAILED,
            error=error,
            finished_at=timezone.now(),
            eta_seconds=None,
        )
    )


def training_job_mark_cancelled(*, job_id: int, attempt: int | None = None) -> bool:
    """Running -> cancelled; False (and nothing written) when the job is not running or,
    given ``attempt``, that attempt no longer holds it."""
    return bool(
        _job_running(job_id, attempt).update(
            status=TrainingJob.Status.CANCELLED,
            error="Cancelled while running.",
            finished_at=timezone.now(),
            eta_seconds=None,
        )
    )


def training_job_succeed(
    *, job_id: int, staged_dir: Path, result: dict[str, Any], attempt: int | None = None
) -> ModelVersion | None:
    """Turn a finished job into the project's next numbered version, in one transaction.

    ``staged_dir`` is the exported version directory (complete, written atomically by
    ``classifier.export``) on the same filesystem; it is renamed to
    ``models/<project>/v<N>``. When the job is no longer running (cancelled meanwhile or,
    given ``attempt``, requeued and perhaps claimed again since that attempt's claim) or
    was asked to cancel after its last batch, nothing is created and the staged files are
    removed; only a cancel request of the job's running attempt is honoured then. With
    ``GRAFT_INT8`` on, the new version's int8 quantization is enqueued once the version is
    committed.
    """
    with transaction.atomic():
        job = TrainingJob.objects.select_for_update().select_related("project").get(pk=job_id)
        held = job.status == TrainingJob.Status.RUNNING and attempt in (None, job.attempts)
        if not held or job.cancel_requested:
            if held:  # asked to stop while it evaluated or exported (no batches to notice)
                training_job_mark_cancelled(job_id=job_id, attempt=attempt)
            shutil.rmtree(staged_dir, ignore_errors=True)
            return None
        project = Project.objects.select_for_update().get(pk=job.project_id)
        number = _next_version_number(project)
        relative = f"models/{project.slug}/v{number}"
        if ModelVersion.objects.filter(directory=relative).exists():
            # Another project's: it was renamed in the admin (before slugs were fixed) and
            # keeps its folders under the slug this project now has.
            relative += f"-job{job.pk}"
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
                size_bytes=_folder_bytes(final),
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
            if settings.GRAFT_INT8:
                transaction.on_commit(partial(_enqueue_quantize, version.pk))
        except BaseException:
            os.rename(final, staged_dir)
            raise
    return version


def _next_version_number(project: Project) -> int:
    """One above every number the project has used: a deleted version's number stays
    taken (the audit log remembers it), so "v3" in the log, in predictions and in a
    rollback always means the same model."""
    used = [
        project.versions.aggregate(n=Max("number"))["n"],
        project.activations.aggregate(n=Max("version_number"))["n"],
    ]
    return max(n or 0 for n in used) + 1


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


# --- int8 quantization ------------------------------------------------------------------


def _enqueue_quantize(version_id: int, force: bool = False) -> None:
    from worker.tasks import quantize_version

    quantize_version.apply_async(args=[version_id, force], queue="default")


def model_version_enqueue_quantize(*, version: ModelVersion, force: bool = False) -> None:
    """Quantize ``version`` to int8 in the background (``default`` queue, on commit).

    ``force`` makes a new int8 copy even when the version already has a record.

    Raises:
        QueueUnavailable: the broker is down, so the task could not be sent.
    """
    _check_broker()
    transaction.on_commit(partial(_enqueue_quantize, version.pk, force))


def model_version_quantize(*, version_id: int, force: bool = False) -> ModelVersion | None:
    """Make the version's int8 copy and record the outcome (the quantize task's body).

    Calibrates on the photos of the dataset the version was trained on
    (``classifier.quantize``, which writes ``model.int8.tflite`` and the record into the
    version's ``metadata.json``), then stores the record in ``version.int8`` and the new
    file list and size, read back from ``metadata.json``: the row then says what serving
    reads. Idempotent: a version that already has a record is returned unchanged unless
    ``force``. A version that cannot be quantized (its dataset deleted, its photos gone,
    damaged files, anything unexpected, a worker that died on every attempt) is never an
    exception here: the reason is logged and recorded, and the version keeps serving what
    it served (float32 unless an earlier int8 copy was accepted).
    Returns ``None`` when the version no longer exists, or was deleted while it ran.
    """
    version = _int8_claim(version_id=version_id, force=force)
    if version is None or not version.int8_running:
        return version
    try:
        _int8_quantize(version, force=force)
    except ClassifierError as exc:
        log.warning("%s: no int8 copy: %s", version, exc)
        _int8_record_failure(version, str(exc))
    except Exception as exc:
        log.exception("%s: quantization failed unexpectedly", version)
        _int8_record_failure(
            version,
            f"Quantization failed unexpectedly: {type(exc).__name__}: {exc}. "
            "The worker log has the details.",
        )
    # Deleted meanwhile (its folder went with it, which is often why it failed): None.
    return ModelVersion.objects.select_related("project").filter(pk=version_id).first()


def _int8_claim(*, version_id: int, force: bool) -> ModelVersion | None:
    """Mark the version's record running (one more attempt), unless there is nothing to do.

    The mark keeps the previous record's fields, so pages and the serving cache go on
    seeing the copy that is on disk. A message redelivered because its worker died (out of
    memory, say) counts as another attempt; past ``GRAFT_JOB_MAX_ATTEMPTS`` the version gets
    a failure record instead of yet another try. A claim while the mark is younger than
    ``GRAFT_HEARTBEAT_TIMEOUT`` is a duplicate (another click) of a run still under way:
    it leaves the mark as it is and waits for that run (quantizations of a version are
    serialised), so clicks never use up the attempts of a live run. Such a claim leaves
    ``started_at`` alone, so a worker that keeps dying is still counted once the mark is
    older than that.
    """
    with transaction.atomic():
        version = (
            ModelVersion.objects.select_for_update(of=("self",))
            .select_related("project", "dataset")
            .filter(pk=version_id)
            .first()
        )
        if version is None:
            return None
        record = dict(version.int8 or {})
        running = bool(record.get("running"))
        if record and not running and not force:
            return version
        attempts = int(record.get("attempts", 0)) + 1 if running else 1
        if running and _int8_run_is_live(record):
            log.info("%s: an int8 quantization is under way; this one waits for it", version)
        elif attempts > settings.GRAFT_JOB_MAX_ATTEMPTS:
            log.warning("%s: the int8 quantization died on every attempt", version)
            _int8_record_failure(
                version,
                f"The worker stopped while quantizing this version on each of its "
                f"{attempts - 1} attempts (check the worker machines' memory and logs).",
            )
        else:
            record.update(running=True, attempts=attempts, started_at=timezone.now().isoformat())
            ModelVersion.objects.filter(pk=version.pk).update(int8=record)
    version.refresh_from_db()
    return version


def _int8_run_is_live(record: dict[str, Any]) -> bool:
    started = _parse_time(record.get("started_at"))
    stale_before = timezone.now() - timedelta(seconds=settings.GRAFT_HEARTBEAT_TIMEOUT)
    return started is not None and started > stale_before


# A quantization takes seconds to a minute; one marked running for this long lost its worker.
INT8_STALE_SECONDS = 1800


def int8_quantizations_reconcile(*, now: datetime | None = None) -> list[int]:
    """Re-enqueue the quantizations whose worker died; returns the versions' ids.

    A version whose record has been marked running for over ``INT8_STALE_SECONDS`` (and
    was not re-enqueued within that time) gets a new task: its claim counts one more
    attempt, so a quantization that kills its worker every time ends, after
    ``GRAFT_JOB_MAX_ATTEMPTS``, in a record saying so instead of a loop. A late duplicate
    of the original message is harmless: quantization is idempotent and serialised per
    version.
    """
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=INT8_STALE_SECONDS)
    requeued: list[int] = []
    for pk in ModelVersion.objects.filter(int8__running=True).values_list("pk", flat=True):
        with transaction.atomic():
            version = ModelVersion.objects.select_for_update().filter(pk=pk).first()
            record = dict(version.int8 or {}) if version is not None else {}
            if not record.get("running"):
                continue
            last = max(
                filter(None, (_parse_time(record.get(k)) for k in ("started_at", "requeued_at"))),
                default=None,
            )
            if last is not None and last > cutoff:
                continue
            record["requeued_at"] = now.isoformat()
            ModelVersion.objects.filter(pk=pk).update(int8=record)
            transaction.on_commit(partial(_enqueue_quantize, pk))
        log.warning("%s: its int8 quantization lost its worker; enqueued again", version)
        requeued.append(pk)
    return requeued


def _parse_time(value: Any) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None
    if parsed is not None and timezone.is_naive(parsed):
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def _int8_quantize(version: ModelVersion, *, force: bool) -> None:
    from classifier.quantize import quantize_version

    if version.dataset is None:
        raise DatasetError(
            "The dataset this version was trained on has been deleted, so there are no "
            "photos to calibrate an int8 copy with."
        )
    record = quantize_version(version.path, version.dataset.path, force=force)
    metadata = _int8_metadata(version)
    if metadata is None:
        raise ClassifierError(f"{version.path / 'metadata.json'} cannot be read back.")
    files = metadata.get("files")
    stored = _int8_on_disk(metadata) or record
    ModelVersion.objects.filter(pk=version.pk).update(
        int8=stored,
        files=files if isinstance(files, dict) else version.files,
        size_bytes=_folder_bytes(version.path),
    )
    log.info("%s: int8 %s", version, "accepted" if stored.get("accepted") else "not accepted")


def _int8_record_failure(version: ModelVersion, reason: str) -> None:
    """Record why no int8 copy was made. A record still on disk (a forced re-run failed)
    is kept, since serving reads that one, with the failure beside it."""
    metadata = _int8_metadata(version)
    current = _int8_on_disk(metadata) if metadata is not None else None
    if current is not None:
        record = {**current, "last_error": reason}
    else:
        record = {
            "accepted": False,
            "file": None,
            "failed": True,
            "reason": reason,
            "created_at": timezone.now().isoformat(timespec="seconds"),
        }
    ModelVersion.objects.filter(pk=version.pk).update(int8=record)


def _int8_metadata(version: ModelVersion) -> dict[str, Any] | None:
    try:
        metadata = json.loads((version.path / "metadata.json").read_bytes())
    except (OSError, ValueError):
        return None
    return metadata if isinstance(metadata, dict) else None


def _int8_on_disk(metadata: dict[str, Any]) -> dict[str, Any] | None:
    from classifier.serving import int8_record

    return int8_record(metadata)


def training_jobs_reconcile(*, now: datetime | None = None) -> dict[str, list[int]]:
    """Find jobs that a dead worker or a lost broker message left behind, and fix them.

    - running, heartbeat older than ``GRAFT_HEARTBEAT_TIMEOUT``: back to queued and
      re-enqueued (it resumes from its last per-epoch checkpoint) while attempts remain,
      else failed with a message saying so;
    - queued for longer than the timeout and not waiting in the broker: re-enqueued.
    Re-enqueuing is safe because claims are conditional: a duplicate message does nothing.
    """
    now = now or timezone.now()
    stale_before = now - timedelta(seconds=settings.GRAFT_HEARTBEAT_TIMEOUT)
    report = _reconcile_report()
    for job in _stale_running(TrainingJob, stale_before):
        if job.cancel_requested:
            TrainingJob.objects.filter(pk=job.pk, status=TrainingJob.Status.RUNNING).update(
                status=TrainingJob.Status.CANCELLED,
                finished_at=now,
                error="Cancelled; its worker stopped before it could finish.",
            )
            continue
        last = job.heartbeat_at or job.started_at or now
        _requeue_or_fail(
            _stale_running(TrainingJob, stale_before).filter(pk=job.pk, cancel_requested=False),
            job,
            enqueue=_enqueue_training,
            report=report,
            requeued={
                "status": TrainingJob.Status.QUEUED,
                "phase": "requeued",
                "error": f"Attempt {job.attempts} was lost (its worker stopped answering); "
                "retrying.",
            },
            failed={
                "status": TrainingJob.Status.FAILED,
                "finished_at": now,
                "eta_seconds": None,
                "error": f"The worker running this job stopped answering on each of its "
                f"{job.attempts} attempts (last heartbeat {last:%Y-%m-%d %H:%M:%S} UTC). "
                "Check the worker machines' memory and logs, then start the job again.",
            },
        )
    _reenqueue_lost(
        _queued_since(TrainingJob, stale_before),
        queue="training",
        enqueue=_enqueue_training,
        report=report,
    )
    return report


def datasets_reconcile(*, now: datetime | None = None) -> dict[str, list[int]]:
    """Find imports that a dead worker or a lost broker message left "importing", and fix
    them, by the training reconcile's rules.

    An import is held by the attempt that claimed it, which beats while it works. One
    silent for ``GRAFT_HEARTBEAT_TIMEOUT`` is released and re-enqueued while attempts
    remain (the next attempt removes what the lost one left and starts again from the
    kept zip, folder or URL), else failed with a message saying so and its files removed;
    one held by no attempt for longer than the timeout whose message is not in the broker
    is re-enqueued.
    """
    now = now or timezone.now()
    stale_before = now - timedelta(seconds=settings.GRAFT_HEARTBEAT_TIMEOUT)
    report = _reconcile_report()
    importing = Dataset.objects.filter(status=Dataset.Status.IMPORTING)
    stale = importing.filter(heartbeat_at__lt=stale_before)
    for dataset in stale:
        attempts = f"{dataset.attempts} attempt{'s' if dataset.attempts != 1 else ''}"
        if _requeue_or_fail(
            stale.filter(pk=dataset.pk),
            dataset,
            enqueue=_enqueue_import,
            report=report,
            requeued={
                "heartbeat_at": None,
                "error": f"Attempt {dataset.attempts} was lost (its worker stopped "
                "answering); starting the import again.",
            },
            failed={
                "status": Dataset.Status.FAILED,
                "updated_at": now,
                "error": f"The worker importing this dataset stopped answering on each of "
                f"its {attempts} (last heartbeat {dataset.heartbeat_at:%Y-%m-%d %H:%M:%S} "
                "UTC), so nothing was imported. Check the worker machines' memory, disk and "
                "logs, then import it again.",
            },
        ):
            transaction.on_commit(partial(_import_leftovers_remove, dataset, keep_upload=False))
    _reenqueue_lost(
        importing.filter(heartbeat_at=None, created_at__lt=stale_before),
        queue="default",
        enqueue=_enqueue_import,
        report=report,
    )
    return report


# The reconcile's steps, shared by training jobs, batches and dataset imports: each has
# ``heartbeat_at``, ``attempts``/``max_attempts`` and the id of the Celery task that
# carries it; the callers say which rows are stale or queued and what each step writes.
Reconciled = TrainingJob | BatchClassification | Dataset


def _reconcile_report() -> dict[str, list[int]]:
    return {"requeued": [], "failed": [], "reenqueued": []}


def _stale_running(
    model: type[TrainingJob | BatchClassification], stale_before: datetime
) -> QuerySet:
    """Running rows whose last heartbeat (else their start) is older than ``stale_before``."""
    return model.objects.filter(status=model.Status.RUNNING).filter(
        Q(heartbeat_at__lt=stale_before) | Q(heartbeat_at__isnull=True, started_at__lt=stale_before)
    )


def _queued_since(
    model: type[TrainingJob | BatchClassification], stale_before: datetime
) -> QuerySet:
    """Rows queued since before ``stale_before`` and not asked to stop."""
    return model.objects.filter(
        status=model.Status.QUEUED, cancel_requested=False, created_at__lt=stale_before
    )


def _requeue_or_fail(
    still_stale: QuerySet,
    row: Reconciled,
    *,
    enqueue: Callable[[int], None],
    report: dict[str, list[int]],
    requeued: dict[str, Any],
    failed: dict[str, Any],
) -> bool:
    """Queue a stale running row again (enqueued on commit) while it has attempts left,
    else fail it; ``requeued``/``failed`` are the fields each writes. Both updates go
    through ``still_stale`` (the row while it is still stale and not asked to stop), so a
    worker that speaks up meanwhile wins, and a cancel asked meanwhile is left for the
    next reconcile. Returns True when the row was failed.
    """
    if row.attempts < row.max_attempts:
        if still_stale.update(**requeued):
            report["requeued"].append(row.pk)
            transaction.on_commit(partial(enqueue, row.pk))
    elif still_stale.update(**failed):
        report["failed"].append(row.pk)
        return True
    return False


def _reenqueue_lost(
    queued: QuerySet,
    *,
    queue: str,
    enqueue: Callable[[int], None],
    report: dict[str, list[int]],
) -> None:
    """Enqueue (on commit) the ``queued`` rows (not just requeued) whose message is neither
    waiting in ``queue`` nor reserved by a worker; all of them when the broker cannot be
    asked."""
    waiting = queued.exclude(pk__in=report["requeued"])
    if not waiting.exists():
        return
    known = _broker_task_ids(queue)
    for row in waiting:
        if known is not None and row.celery_task_id and row.celery_task_id in known:
            continue
        report["reenqueued"].append(row.pk)
        transaction.on_commit(partial(enqueue, row.pk))


def _broker_task_ids(queue: str) -> set[str] | None:
    """Task ids waiting in, or reserved from, the Redis list ``queue`` (None: unknown)."""
    from worker import app

    try:
        with app.connection_for_write() as conn:
            client = conn.default_channel.client
            ids: set[str] = set()
            for raw in client.lrange(queue, 0, -1):
                ids.add(json.loads(raw)["headers"]["id"])
            for raw in client.hvals("unacked"):
                message = json.loads(raw)[0]
                ids.add(message["headers"]["id"])
            return ids
    except Exception:
        log.warning("Could not list the broker's queued tasks", exc_info=True)
        return None


# --- Predictions and batch classification ---------------------------------------------

BATCH_CHUNK = 32
BATCH_TOP_K = 3


class UploadTooLarge(Exception):
    """An upload is over its size limit (a photo: GRAFT_MAX_IMAGE_MB; a zip: GRAFT_MAX_ZIP_MB)."""


def max_image_bytes() -> int:
    return settings.GRAFT_MAX_IMAGE_MB * 2**20


def photo_size_check(*, size: int) -> None:
    """Raise UploadTooLarge for a photo of ``size`` bytes over ``GRAFT_MAX_IMAGE_MB``; views
    call it before they read an upload into memory."""
    if size > max_image_bytes():
        raise UploadTooLarge(
            f"The photo is {size / 2**20:.1f} MB; the limit is {settings.GRAFT_MAX_IMAGE_MB} MB."
        )


def prediction_create(
    *,
    project: Project,
    image: bytes,
    filename: str = "",
    user: AbstractBaseUser | None = None,
    source: str = Prediction.Source.WEB,
    top_k: int = 5,
) -> Prediction:
    """Classify one photo with the project's active version and log the answer.

    The photo itself is stored only when ``GRAFT_KEEP_PREDICTION_IMAGES`` is on; its
    sha256 always is. ``latency_ms`` is decoding plus inference, as the caller waited.

    Raises:
        UploadTooLarge: the photo is over ``GRAFT_MAX_IMAGE_MB``.
        NoActiveVersion: no version of the project is active.
        classifier.errors.InvalidImageError: not an image, damaged, or too many pixels.
        classifier.errors.ArtifactError: the active version's files are damaged.
    """
    from webapp.predictor import served_version

    photo_size_check(size=len(image))
    served = served_version(project.pk)
    if served is None:
        raise NoActiveVersion(
            f"Project “{project.name}” has no active model version; train or activate one."
        )
    started = time.perf_counter()
    top = served.predictor.predict(image, top_k=top_k)
    latency_ms = (time.perf_counter() - started) * 1000
    digest = hashlib.sha256(image).hexdigest()
    prediction = Prediction(
        project=project,
        version_id=served.version_id,
        version_number=served.number,
        image_sha256=digest,
        filename=Path(filename).name[:255],
        top=top,
        label=top[0]["label"],
        confidence=top[0]["confidence"],
        latency_ms=latency_ms,
        precision=served.predictor.precision,
        source=source,
        user=user if user is not None and user.is_authenticated else None,
    )
    if settings.GRAFT_KEEP_PREDICTION_IMAGES:
        name = f"{digest[:32]}{_image_suffix(image, filename)}"
        prediction.image.save(name, ContentFile(image), save=False)
    prediction.save()
    return prediction


def _image_suffix(image: bytes, filename: str) -> str:
    """The file suffix for a photo that decoded fine: its own, else from its format."""
    suffix = Path(filename).suffix.lower()
    if suffix in SUPPORTED_SUFFIXES:
        return suffix
    from PIL import Image

    with Image.open(io.BytesIO(image)) as opened:
        return {"JPEG": ".jpg", "MPO": ".jpg"}.get(opened.format, f".{opened.format.lower()}")


def prediction_correct(
    *, prediction: Prediction, label: str, user: AbstractBaseUser | None = None
) -> Prediction:
    """Record a person's correction (the right class name) for a prediction.

    A label that names one of the version's classes in another case ("Roses" for
    "roses") is stored as the class is spelled, so "Add to dataset" puts the photo in that
    class's folder, not a new one; any other label is stored as typed.

    Raises:
        ValidationError: the label could not be a class folder name, or the photo is
            already in a dataset (under the label it had then; a correction would not
            reach it there).
    """
    try:
        label = dataset_files.validate_class_name(label)
    except dataset_files.ImportRefused as exc:
        raise ValidationError({"label": str(exc)}) from None
    label = _class_name_spelled(label, prediction.version.class_names if prediction.version else [])
    corrected = Prediction.objects.filter(pk=prediction.pk, added_to_dataset__isnull=True).update(
        corrected_label=label,
        corrected_by=user if user is not None and user.is_authenticated else None,
        corrected_at=timezone.now(),
    )
    prediction.refresh_from_db()
    if not corrected:
        raise ValidationError(
            {
                "label": f"The photo is already in dataset “{prediction.added_to_dataset.name}” as "
                f"“{prediction.corrected_label or prediction.label}”; a correction now would "
                "not change it there."
            }
        )
    return prediction


def _class_name_spelled(label: str, class_names: list[str]) -> str:
    """``label`` as ``class_names`` spell it when exactly one matches it ignoring case."""
    if label in class_names:
        return label
    matches = [name for name in class_names if name.casefold() == label.casefold()]
    return matches[0] if len(matches) == 1 else label


def prediction_add_to_dataset(
    *, prediction: Prediction, dataset: Dataset, user: AbstractBaseUser | None = None
) -> Prediction:
    """Copy a kept photo into ``dataset`` under its corrected (else predicted) label.

    Raises:
        ValidationError: the photo was not kept (``GRAFT_KEEP_PREDICTION_IMAGES`` off when
            it was classified), the dataset is another project's, not ready or deleted
            meanwhile, or the prediction was already added to a dataset.
    """
    if dataset.project_id != prediction.project_id:
        raise ValidationError({"dataset": "That dataset belongs to another project."})
    if not prediction.image:
        raise ValidationError(
            "The photo was not kept (GRAFT_KEEP_PREDICTION_IMAGES was off when it was "
            "classified), so it cannot be added to a dataset; upload it to the dataset instead."
        )
    try:
        with prediction.image.open("rb") as handle:
            data = handle.read()
    except OSError:
        raise ValidationError("The kept photo is missing from storage.") from None
    name = f"prediction-{prediction.pk}{Path(prediction.image.name).suffix}"
    try:
        with transaction.atomic():
            # The dataset is judged again, locked, in the transaction that links the photo
            # to it: a delete either waits for the copy (and removes it with the rest) or
            # went first, and the add is refused instead of recreating the folder.
            current = Dataset.objects.select_for_update().filter(pk=dataset.pk).first()
            if current is None:
                raise ValidationError(
                    {"dataset": f"Dataset “{dataset.name}” was deleted meanwhile."}
                )
            if current.status != Dataset.Status.READY:
                raise ValidationError(
                    {"dataset": f"The dataset is {current.get_status_display()}."}
                )
            # Claimed before the copy, so two requests at once (a double click) add it once.
            claim = Prediction.objects.filter(pk=prediction.pk, added_to_dataset__isnull=True)
            if not claim.update(added_to_dataset=current):
                raise ValidationError("This photo was already added to a dataset.")
            prediction.refresh_from_db()
            label = prediction.corrected_label or prediction.label
            report = dataset_add_images(
                dataset=current, class_name=label, files=[(name, data)], user=user
            )
            if not report.written:
                reason = report.rejected[0][1] if report.rejected else "refused"
                raise ValidationError(f"The photo could not be added: {reason}.")
    except BaseException:
        prediction.refresh_from_db()  # the claim was rolled back
        raise
    return prediction


def predictions_delete(*, predictions: QuerySet[Prediction]) -> int:
    """Delete ``predictions`` and, once that commits, the photos kept for them (the
    admin's delete and the retention both come here); returns how many rows went."""
    with transaction.atomic():
        images = [name for name in predictions.values_list("image", flat=True) if name]
        deleted, _ = predictions.delete()
        transaction.on_commit(partial(_prediction_images_remove, images))
    return deleted


def _prediction_images_remove(names: list[str]) -> None:
    for name in names:
        default_storage.delete(name)


def predictions_prune(*, now: datetime | None = None) -> dict[str, int]:
    """Delete predictions and finished batches older than GRAFT_PREDICTION_RETENTION_DAYS.

    Kept photos and batch folders go with their rows. Returns what was deleted; does
    nothing when the retention is 0 (keep forever).
    """
    days = settings.GRAFT_PREDICTION_RETENTION_DAYS
    if days <= 0:
        return {"predictions": 0, "batches": 0}
    cutoff = (now or timezone.now()) - timedelta(days=days)
    deleted = 0
    while True:
        chunk = list(
            Prediction.objects.filter(created_at__lt=cutoff).values_list("pk", flat=True)[:1000]
        )
        if not chunk:
            break
        deleted += predictions_delete(predictions=Prediction.objects.filter(pk__in=chunk))
    batches = list(
        BatchClassification.objects.filter(
            created_at__lt=cutoff, status__in=BatchClassification.FINISHED
        )
    )
    for batch in batches:
        batch_id = batch.pk
        batch.delete()
        _batch_folder_remove(batch_id, batch.directory)
    return {"predictions": deleted, "batches": len(batches)}


def batch_create(
    *,
    project: Project,
    files: list[UploadedFile],
    user: AbstractBaseUser | None = None,
    check_queue: bool = True,
    check_workers: bool = False,
) -> BatchClassification:
    """Store photos (one zip, or several image files) and enqueue their classification.

    The version active now classifies all of them, even if another is activated meanwhile.
    Nothing is stored when any check fails.

    Raises:
        ValidationError: no files, a zip that cannot be read or holds no photos, a zip sent
            with other files, or a single file that is neither a zip nor a photo.
        UploadTooLarge: a photo over GRAFT_MAX_IMAGE_MB, a zip over GRAFT_MAX_ZIP_MB, or
            one that unpacks to more than GRAFT_MAX_UNZIPPED_MB / GRAFT_MAX_ZIP_FILES.
        NoActiveVersion: nothing is active to classify with.
        QueueUnavailable: the broker is down (``check_queue``), or no worker answers
            (``check_workers``: off for the API, where a batch may wait, queued, for the
            next worker and asking costs every upload a second).
    """
    if not files:
        raise ValidationError({"files": "Send a zip of photos or one or more photos."})
    version = ModelVersion.objects.filter(project=project, is_active=True).first()
    if version is None:
        raise NoActiveVersion(
            f"Project “{project.name}” has no active model version; train or activate one."
        )
    is_zip = _batch_is_zip(files)
    if is_zip:
        if files[0].size > settings.GRAFT_MAX_ZIP_MB * 2**20:
            raise UploadTooLarge(f"The zip is over the {settings.GRAFT_MAX_ZIP_MB} MB limit.")
        total = _zip_photo_count(files[0])
    else:
        for upload in files:
            if upload.size > max_image_bytes():
                raise UploadTooLarge(
                    f"{upload.name} is over the {settings.GRAFT_MAX_IMAGE_MB} MB limit."
                )
        total = len(files)
    if check_queue:
        _check_broker()
    if check_workers:
        _check_workers("No worker is running, so the batch would never start.")
    folder: Path | None = None
    try:
        with transaction.atomic():
            batch = BatchClassification.objects.create(
                project=project,
                version=version,
                version_number=version.number,
                total=total,
                max_attempts=settings.GRAFT_JOB_MAX_ATTEMPTS,
                created_by=user if user is not None and user.is_authenticated else None,
            )
            batch.directory = f"batches/{batch.pk}"
            batch.save(update_fields=["directory"])
            folder = batch.path
            _write_batch_inputs(folder, files, is_zip=is_zip)
            transaction.on_commit(partial(_enqueue_batch, batch.pk))
    except BaseException:
        if folder is not None:  # the row was rolled back; its files go too
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return batch


def batch_claim(*, batch_id: int) -> BatchClassification | None:
    """Queued -> running, exactly once: a duplicate or redelivered message gets None.

    Each claim is a new attempt that starts from the first photo: the counters go back to
    zero and whatever an earlier, lost attempt logged is removed, so no photo is counted or
    logged twice. A cancelled batch is never claimed (its message may still arrive).
    """
    now = timezone.now()
    with transaction.atomic():
        claimed = BatchClassification.objects.filter(
            pk=batch_id, status=BatchClassification.Status.QUEUED, cancel_requested=False
        ).update(
            status=BatchClassification.Status.RUNNING,
            attempts=F("attempts") + 1,
            started_at=now,
            heartbeat_at=now,
            done=0,
            failed=0,
            error="",
        )
        if claimed != 1:
            return None
        Prediction.objects.filter(batch_id=batch_id).delete()
    batch = BatchClassification.objects.select_related("project", "version").get(pk=batch_id)
    for leftover in batch.path.glob("results.*.tmp-*"):
        leftover.unlink(missing_ok=True)
    return batch


class _ClaimLost(Exception):
    """This attempt is no longer the batch's running one (the reconcile requeued it)."""


def batch_run(*, batch_id: int) -> BatchClassification | None:
    """Classify a queued batch (called by the worker); ``None`` if another worker has it.

    Writes ``results.csv`` and ``results.json`` (one row per file, in upload order, with
    an ``error`` for files that are not readable photos), logs every answer as a
    ``Prediction`` (source "batch", hash only) and updates ``done``/``failed`` and the
    heartbeat per chunk. An attempt that finds it lost its claim (it was silent for longer
    than ``GRAFT_HEARTBEAT_TIMEOUT`` and was requeued) stops without writing more. Before
    each chunk it checks for a cancel (:func:`batch_cancel`); asked to stop, it keeps the
    results of the chunks done so far and marks the batch cancelled.
    """
    from classifier.serving import Predictor

    batch = batch_claim(batch_id=batch_id)
    if batch is None:
        return None
    stopped = False
    try:
        if batch.version is None:
            raise ClassifierError("The version this batch was started with has been deleted.")
        predictor = Predictor.load(batch.version.path, prefer_int8=settings.GRAFT_INT8)
        with _BatchResults(batch) as results:
            for chunk in _chunks(_batch_inputs(batch.path), BATCH_CHUNK):
                if _batch_running(batch).filter(cancel_requested=True).exists():
                    stopped = True
                    break
                _classify_chunk(batch, predictor, chunk, results)
    except _ClaimLost:
        log.warning(
            "Batch %s: attempt %s was requeued meanwhile; stopping", batch_id, batch.attempts
        )
        return None
    except ClassifierError as exc:
        _batch_finish(batch, BatchClassification.Status.FAILED, str(exc))
    except Exception as exc:
        log.exception("Batch %s failed", batch_id)
        _batch_finish(batch, BatchClassification.Status.FAILED, f"Unexpected error: {exc}")
    else:
        if stopped:
            log.info("Batch %s: stopped on request", batch_id)
            _batch_finish(batch, BatchClassification.Status.CANCELLED, "Cancelled while running.")
        else:
            _batch_finish(batch, BatchClassification.Status.SUCCEEDED)
    batch.refresh_from_db()
    return batch


def batch_cancel(
    *, batch: BatchClassification, user: AbstractBaseUser | None
) -> BatchClassification:
    """Cancel a queued batch at once; ask a running one to stop before its next chunk.

    A running batch keeps what it classified before it stopped: those rows stay in its
    results (partial, and downloadable) and in the prediction log. A queued batch's message
    is left in the broker, as a training job's is: the claim finds the batch cancelled and
    does nothing with it. ``user`` None is the system (a command), which may cancel any.
    The first request records ``user`` as ``cancelled_by`` (the system records nobody);
    asking a running batch again is no error and keeps the first canceller.

    Raises:
        PermissionDenied: ``user`` neither started the batch nor may train models.
        WrongStatus: the batch has already finished (succeeded, failed or cancelled).
    """
    _batch_check_user(batch, user, "cancel")
    # One statement, so a claim or a requeue cannot slip in between "it was queued" and
    # "it is cancelled"; status is set last and the canceller first, as some databases
    # assign left to right.
    changed = BatchClassification.objects.filter(
        pk=batch.pk,
        status__in=[BatchClassification.Status.QUEUED, BatchClassification.Status.RUNNING],
    ).update(
        cancelled_by=_first_canceller(BatchClassification, user),
        cancel_requested=True,
        finished_at=_if_queued("finished_at", timezone.now()),
        error=_if_queued("error", "Cancelled before it started."),
        status=_if_queued("status", BatchClassification.Status.CANCELLED),
    )
    batch.refresh_from_db()
    if not changed:
        raise WrongStatus(
            f"Batch #{batch.pk} has already {batch.get_status_display().lower()}; "
            "there is nothing to cancel."
        )
    log.info(
        "Batch %s: %s by %s",
        batch.pk,
        "cancelled" if batch.is_finished else "asked to stop",
        _username(user),
    )
    return batch


def _first_canceller(
    model: type[TrainingJob] | type[BatchClassification], user: AbstractBaseUser | None
) -> Case:
    """In a cancel's update: ``user`` when no cancel was requested yet (NULL for the system or
    a user who is not logged in), the recorded canceller otherwise, so the first one stays."""
    canceller = user.pk if user is not None and user.is_authenticated else None
    return Case(
        When(cancel_requested=False, then=Value(canceller)),
        default=F("cancelled_by"),
        output_field=model._meta.get_field("cancelled_by"),
    )


def _if_queued(field: str, value: Any) -> Case:
    """In an update of batches: ``value`` for a queued one, ``field`` unchanged otherwise."""
    return Case(
        When(status=BatchClassification.Status.QUEUED, then=Value(value)),
        default=F(field),
        output_field=BatchClassification._meta.get_field(field),
    )


def batch_delete(*, batch: BatchClassification, user: AbstractBaseUser | None) -> None:
    """Delete a finished batch: its row, then its folder (the uploaded photos, the results).

    The predictions it logged stay in the prediction log, which its retention governs, with
    their link to the batch cleared. The row goes in a transaction and the folder only after
    it commits, so a folder that cannot be removed costs nothing else (it is logged, to
    remove by hand); a folder already gone is fine. ``user`` None is the system.

    Raises:
        PermissionDenied: ``user`` neither started the batch nor may train models.
        WrongStatus: the batch is queued or running (cancel it first).
    """
    _batch_check_user(batch, user, "delete")
    with transaction.atomic():
        deleted, _ = BatchClassification.objects.filter(
            pk=batch.pk, status__in=BatchClassification.FINISHED
        ).delete()
        if not deleted:
            current = BatchClassification.objects.filter(pk=batch.pk).first()
            if current is None:
                return  # deleted meanwhile, by someone else
            raise WrongStatus(
                f"Batch #{batch.pk} is {current.get_status_display().lower()}; cancel it "
                "first, then delete it once it has stopped."
            )
        transaction.on_commit(partial(_batch_folder_remove, batch.pk, batch.directory))
    log.info("Batch %s: deleted by %s", batch.pk, _username(user))


def _batch_check_user(
    batch: BatchClassification, user: AbstractBaseUser | None, action: str
) -> None:
    if user is not None and not batch.may_be_changed_by(user):
        raise PermissionDenied(
            f"Only the person who started batch #{batch.pk}, or someone who may train models, "
            f"may {action} it."
        )


def _username(user: AbstractBaseUser | None) -> str:
    return user.get_username() if user is not None else "the system"


def _batch_folder_remove(batch_id: int, directory: str) -> None:
    """Remove a deleted batch's folder under ``GRAFT_DATA_DIR`` (never the data root)."""
    root = Path(settings.GRAFT_DATA_DIR).resolve()
    folder = (root / directory).resolve()
    if folder == root or not folder.is_relative_to(root):
        return
    try:
        shutil.rmtree(folder)
    except FileNotFoundError:
        pass
    except OSError:
        log.warning(
            "Batch %s is deleted, but its folder %s could not be removed; remove it by hand.",
            batch_id,
            folder,
            exc_info=True,
        )


def _is_zip_upload(upload: UploadedFile) -> bool:
    upload.seek(0)
    try:
        return zipfile.is_zipfile(upload)
    finally:
        upload.seek(0)


def _batch_is_zip(files: list[UploadedFile]) -> bool:
    """True for one zip, False for photos; refuses what is plainly neither, up front.

    Several files are photos (one that is not gets its own error in the results); a zip
    must come alone; a single file must be a readable zip or a photo Pillow recognises.
    """
    zips = [f for f in files if _is_zip_upload(f) or _suffix(f) == ".zip"]
    if len(files) > 1 and zips:
        raise ValidationError(
            {
                "files": f"Send a zip on its own, or photos without one ({zips[0].name} came "
                f"with {len(files) - 1} other file{'s' if len(files) > 2 else ''})."
            }
        )
    if len(files) > 1:
        return False
    upload = files[0]
    if zips:
        if _is_zip_upload(upload):
            return True
        raise ValidationError(
            {
                "files": f"{upload.name} is not a zip file that can be read (it may be damaged "
                "or cut short); send a zip of photos, or the photos themselves."
            }
        )
    if not _looks_like_photo(upload):
        raise ValidationError(
            {
                "files": f"{upload.name} is neither a zip nor a photo Graft can read (JPEG, PNG, "
                "BMP, WebP, GIF)."
            }
        )
    return False


def _suffix(upload: UploadedFile) -> str:
    return PurePosixPath(upload.name or "").suffix.lower()


def _looks_like_photo(upload: UploadedFile) -> bool:
    """Pillow recognises the file's header (the pixels are decoded later, by the worker)."""
    from PIL import Image, UnidentifiedImageError

    upload.seek(0)
    try:
        with Image.open(upload):
            return True
    except Image.DecompressionBombError:
        return True  # a photo after all: its row in the results says why it was refused
    except (UnidentifiedImageError, OSError, ValueError):
        return False
    finally:
        upload.seek(0)


def _zip_entries(archive: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    """Photo entries of a zip, in archive order (folders, hidden and junk files skipped)."""
    entries = []
    for info in archive.infolist():
        parts = PurePosixPath(info.filename).parts
        if info.is_dir() or not parts or any(p.startswith(".") for p in parts):
            continue
        if "__MACOSX" in parts or PurePosixPath(info.filename).suffix.lower() not in (
            SUPPORTED_SUFFIXES
        ):
            continue
        entries.append(info)
    return entries


def _zip_photo_count(upload: UploadedFile) -> int:
    try:
        with zipfile.ZipFile(upload) as archive:
            entries = _zip_entries(archive)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ValidationError({"files": f"The zip cannot be read: {exc}"}) from None
    finally:
        upload.seek(0)
    if not entries:
        raise ValidationError({"files": "The zip holds no photos (JPEG, PNG, BMP, WebP, GIF)."})
    if len(entries) > settings.GRAFT_MAX_ZIP_FILES:
        raise UploadTooLarge(
            f"The zip holds {len(entries)} photos; the limit is {settings.GRAFT_MAX_ZIP_FILES}."
        )
    if sum(info.file_size for info in entries) > settings.GRAFT_MAX_UNZIPPED_MB * 2**20:
        raise UploadTooLarge(f"The zip unpacks to over {settings.GRAFT_MAX_UNZIPPED_MB} MB.")
    return len(entries)


def _write_batch_inputs(folder: Path, files: list[UploadedFile], *, is_zip: bool) -> None:
    inputs = folder / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    if is_zip:
        targets = [(files[0], folder / "input.zip")]
    else:
        targets = [
            (upload, inputs / f"{i:06d}-{Path(upload.name or 'photo').name[:100]}")
            for i, upload in enumerate(files)
        ]
    for upload, target in targets:
        upload.seek(0)
        with open(target, "wb") as handle:
            for block in upload.chunks():
                handle.write(block)


def _batch_inputs(folder: Path) -> Iterator[tuple[str, bytes | str]]:
    """``(file name, bytes)`` per photo, or ``(file name, reason)`` for one that is refused."""
    limit = max_image_bytes()
    archive_path = folder / "input.zip"
    if archive_path.exists():
        with zipfile.ZipFile(archive_path) as archive:
            for info in _zip_entries(archive):
                if info.file_size > limit:
                    yield info.filename, f"over the {settings.GRAFT_MAX_IMAGE_MB} MB limit"
                    continue
                try:
                    with archive.open(info) as handle:
                        data = handle.read(limit + 1)  # Never trust the declared size.
                except (zipfile.BadZipFile, OSError, EOFError) as exc:
                    yield info.filename, f"cannot be unpacked: {exc}"
                    continue
                if len(data) > limit:
                    yield info.filename, f"over the {settings.GRAFT_MAX_IMAGE_MB} MB limit"
                else:
                    yield info.filename, data
        return
    for path in sorted((folder / "inputs").iterdir()):
        yield path.name.split("-", 1)[-1], path.read_bytes()


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _classify_chunk(
    batch: BatchClassification,
    predictor: Any,
    chunk: list[tuple[str, bytes | str]],
    results: _BatchResults,
) -> None:
    import numpy as np

    rows: list[dict[str, Any]] = []
    pixels, ok_rows, digests = [], [], []
    for name, payload in chunk:
        row: dict[str, Any] = {"file": name, "label": None, "confidence": None, "top": []}
        rows.append(row)
        if isinstance(payload, str):
            row["error"] = payload
            continue
        try:
            pixels.append(predictor.load_pixels(payload))
        except InvalidImageError as exc:
            row["error"] = str(exc)
            continue
        row["error"] = None
        ok_rows.append(row)
        digests.append(hashlib.sha256(payload).hexdigest())
    latency_ms = 0.0
    if pixels:
        started = time.perf_counter()
        probabilities = predictor.predict_array(np.stack(pixels))
        latency_ms = (time.perf_counter() - started) * 1000 / len(pixels)
        for row, probs in zip(ok_rows, probabilities, strict=True):
            row["top"] = _top_k(predictor.labels, probs, BATCH_TOP_K)
            row["label"], row["confidence"] = row["top"][0]["label"], row["top"][0]["confidence"]
    with transaction.atomic():
        # Progress first: it fails when this attempt lost its claim, and holds the row
        # until the predictions are in, so a requeue cannot slip in between.
        if not _batch_running(batch).update(
            done=F("done") + len(rows),
            failed=F("failed") + len(rows) - len(ok_rows),
            heartbeat_at=timezone.now(),
        ):
            raise _ClaimLost
        Prediction.objects.bulk_create(
            Prediction(
                project_id=batch.project_id,
                version_id=batch.version_id,
                version_number=batch.version_number,
                image_sha256=digest,
                filename=Path(row["file"]).name[:255],
                top=row["top"],
                label=row["label"],
                confidence=row["confidence"],
                latency_ms=latency_ms,
                precision=predictor.precision,
                source=Prediction.Source.BATCH,
                user_id=batch.created_by_id,
                batch_id=batch.pk,
            )
            for row, digest in zip(ok_rows, digests, strict=True)
        )
    results.write(rows)


def _batch_running(batch: BatchClassification) -> QuerySet[BatchClassification]:
    """The batch's row while this attempt still holds it."""
    return BatchClassification.objects.filter(
        pk=batch.pk, status=BatchClassification.Status.RUNNING, attempts=batch.attempts
    )


def _top_k(labels: list[str], probs: Any, k: int) -> list[dict[str, Any]]:
    order = sorted(range(len(labels)), key=lambda i: -float(probs[i]))[:k]
    return [{"label": labels[i], "confidence": float(probs[i])} for i in order]


# A spreadsheet runs a cell that starts with one of these as a formula ("CSV injection").
CSV_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _csv_text_cell(value: str) -> str:
    """``value`` for a text cell of the results CSV, which people open in spreadsheets: a
    leading apostrophe keeps one that starts like a formula (a file name in an uploaded zip,
    say) text. One that starts with an apostrophe gets another, so that
    ``selectors.batch_results`` reads every value back exactly by dropping the first.
    """
    return f"'{value}" if value.startswith((*CSV_FORMULA_STARTS, "'")) else value


class _BatchResults:
    """Streams result rows to ``results.csv`` and ``results.json``, moved in at the end."""

    def __init__(self, batch: BatchClassification) -> None:
        self.batch = batch
        self.folder = batch.path
        self._first = True
        # One pair per attempt: a lost attempt that wakes up never writes into the next one's.
        self._tmp = {
            name: self.folder / f"results.{name}.tmp-{batch.attempts}" for name in ("csv", "json")
        }

    def __enter__(self) -> _BatchResults:
        # UTF-8 whatever the worker's locale: file names come from users' zips.
        self._csv_file = open(self._tmp["csv"], "w", newline="", encoding="utf-8")  # noqa: SIM115
        self._json_file = open(self._tmp["json"], "w", encoding="utf-8")  # noqa: SIM115
        self._csv = csv.writer(self._csv_file)
        self._csv.writerow(["file", "label", "confidence", "top", "error"])
        head = {
            "batch": self.batch.pk,
            "project": self.batch.project.slug,
            "version": self.batch.version_number,
        }
        self._json_file.write(json.dumps(head)[:-1] + ', "results": [\n')
        return self

    def write(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            top = " | ".join(f"{t['label']}={t['confidence']:.4f}" for t in row["top"])
            confidence = "" if row["confidence"] is None else f"{row['confidence']:.6f}"
            self._csv.writerow(
                [
                    _csv_text_cell(row["file"]),
                    _csv_text_cell(row["label"] or ""),
                    confidence,
                    _csv_text_cell(top),
                    _csv_text_cell(row["error"] or ""),
                ]
            )
            self._json_file.write(("" if self._first else ",\n") + json.dumps(row))
            self._first = False

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        self._json_file.write("\n]}\n")
        self._csv_file.close()
        self._json_file.close()
        keep = kind is None and _batch_running(self.batch).exists()
        for name, tmp in self._tmp.items():
            if keep:
                os.replace(tmp, self.folder / f"results.{name}")
            else:
                tmp.unlink(missing_ok=True)


def _batch_finish(batch: BatchClassification, status: str, error: str = "") -> None:
    _batch_running(batch).update(status=status, error=error, finished_at=timezone.now())


def batches_reconcile(*, now: datetime | None = None) -> dict[str, list[int]]:
    """Find batches that a dead worker or a lost broker message left behind, and fix them.

    The training reconcile's rules, with progress (a chunk of photos classified) as the
    heartbeat: a batch running without progress for ``GRAFT_HEARTBEAT_TIMEOUT`` is queued
    again and re-enqueued (it starts over) while attempts remain, else failed with a
    message saying so; a batch queued for longer than that whose message is not in the
    broker is re-enqueued. A running batch asked to stop whose worker went silent is
    cancelled, not retried; cancelled and other finished batches are left alone. Claims are
    conditional, so a duplicate message does nothing.
    """
    now = now or timezone.now()
    stale_before = now - timedelta(seconds=settings.GRAFT_HEARTBEAT_TIMEOUT)
    report = _reconcile_report()
    for batch in _stale_running(BatchClassification, stale_before):
        if batch.cancel_requested:
            _stale_running(BatchClassification, stale_before).filter(pk=batch.pk).update(
                status=BatchClassification.Status.CANCELLED,
                finished_at=now,
                error="Cancelled; its worker stopped before it could finish, so it has no "
                "results to download.",
            )
            continue
        last = batch.heartbeat_at or batch.started_at or now
        _requeue_or_fail(
            _stale_running(BatchClassification, stale_before).filter(
                pk=batch.pk, cancel_requested=False
            ),
            batch,
            enqueue=_enqueue_batch,
            report=report,
            requeued={
                "status": BatchClassification.Status.QUEUED,
                "done": 0,
                "failed": 0,
                "error": f"Attempt {batch.attempts} was lost (its worker stopped making "
                "progress); starting again from the first photo.",
            },
            failed={
                "status": BatchClassification.Status.FAILED,
                "finished_at": now,
                "error": f"The worker classifying this batch stopped making progress on "
                f"each of its {batch.attempts} attempt{'s' if batch.attempts != 1 else ''} "
                f"(last progress {last:%Y-%m-%d %H:%M:%S} UTC). Check the worker machines' "
                "memory and logs, then upload the photos again.",
            },
        )
    _reenqueue_lost(
        _queued_since(BatchClassification, stale_before),
        queue="default",
        enqueue=_enqueue_batch,
        report=report,
    )
    return report


def _check_broker() -> None:
    from webapp.health import check_broker

    broker = check_broker(timeout=2.0)
    if not broker["ok"]:
        raise QueueUnavailable(f"The job queue is unavailable: {broker['error']}.")


def _enqueue_batch(batch_id: int) -> None:
    from worker.tasks import classify_batch

    result = classify_batch.apply_async(args=[batch_id], queue="default")
    BatchClassification.objects.filter(pk=batch_id).update(celery_task_id=result.id)
