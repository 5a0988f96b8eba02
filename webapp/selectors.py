"""Reads: the queries pages and the API display. No writes here."""

from __future__ import annotations

import csv
from typing import Any

from django.db.models import Count, QuerySet

from webapp.models import (
    ActivationEvent,
    BatchClassification,
    Dataset,
    ModelVersion,
    Prediction,
    Project,
    TrainingJob,
)


def running_training_attempts() -> set[tuple[int, int]]:
    """``(job id, attempt)`` of every running training job: whose staged exports are live."""
    rows = TrainingJob.objects.filter(status=TrainingJob.Status.RUNNING)
    return set(rows.values_list("pk", "attempts"))


def unfinished_training_job_ids() -> set[int]:
    """Ids of the queued and running training jobs: those whose checkpoints may resume."""
    rows = TrainingJob.objects.exclude(status__in=TrainingJob.FINISHED)
    return set(rows.values_list("pk", flat=True))


def project_list() -> QuerySet[Project]:
    return Project.objects.annotate(
        dataset_count=Count("datasets", distinct=True),
        version_count=Count("versions", distinct=True),
    ).order_by("name")


def active_versions() -> QuerySet[ModelVersion]:
    return ModelVersion.objects.filter(is_active=True).select_related("project", "dataset")


def dashboard_counts() -> dict[str, int]:
    return {
        "projects": Project.objects.count(),
        "datasets": Dataset.objects.filter(status=Dataset.Status.READY).count(),
        "jobs_running": TrainingJob.objects.filter(
            status__in=[TrainingJob.Status.QUEUED, TrainingJob.Status.RUNNING]
        ).count(),
        "jobs": TrainingJob.objects.count(),
        "versions": ModelVersion.objects.count(),
        "predictions": Prediction.objects.count(),
    }


def job_list(*, project: Project | None = None, limit: int | None = None) -> QuerySet[TrainingJob]:
    jobs = TrainingJob.objects.select_related("project", "dataset", "version")
    if project is not None:
        jobs = jobs.filter(project=project)
    return jobs[:limit] if limit else jobs


def dataset_list(*, project: Project | None = None) -> QuerySet[Dataset]:
    datasets = Dataset.objects.select_related("project")
    return datasets.filter(project=project) if project is not None else datasets


def version_list(*, project: Project | None = None) -> QuerySet[ModelVersion]:
    versions = ModelVersion.objects.select_related("project", "dataset", "job")
    if project is not None:
        versions = versions.filter(project=project)
    return versions.order_by("project__name", "-number")


def prediction_list(*, project: Project | None = None, limit: int = 20) -> QuerySet[Prediction]:
    """The latest photos classified one by one (page or API); a batch's rows are on its page."""
    predictions = Prediction.objects.filter(batch=None).select_related("project", "user")
    if project is not None:
        predictions = predictions.filter(project=project)
    return predictions[:limit]


# --- Pages (datasets, jobs, versions, classify) ----------------------------------------


def ready_datasets(*, project: Project) -> QuerySet[Dataset]:
    return Dataset.objects.filter(project=project, status=Dataset.Status.READY).order_by("name")


def dataset_delete_refusal(*, dataset: Dataset) -> str:
    """Why ``dataset`` cannot be deleted now, in words; "" when it can.

    An import owns the folder while it runs, and a queued or running job reads it. Finished
    jobs and versions keep it too, by design: their pages link what they learned from (a
    version shows its most confident mistakes from these photos), a job's file list names
    them, and a dataset row stays the one place a fingerprint leads back to.
    """
    if dataset.is_importing:
        return (
            f"Dataset “{dataset.name}” is still importing; delete it once it is ready or "
            "has failed."
        )
    jobs = list(dataset.jobs.order_by("pk").values_list("pk", "status"))
    active = [f"#{pk}" for pk, status in jobs if status not in TrainingJob.FINISHED]
    if active:
        return (
            f"{_listed('Job', active)} on dataset “{dataset.name}” "
            f"{'are' if len(active) > 1 else 'is'} queued or running; cancel "
            f"{'them' if len(active) > 1 else 'it'}, then delete the dataset once stopped."
        )
    numbers = list(dataset.versions.order_by("number").values_list("number", flat=True))
    used = [
        _listed("version", [f"v{n}" for n in numbers]),
        _listed("job", [f"#{pk}" for pk, _ in jobs]),
    ]
    used = [text for text in used if text]
    if not used:
        return ""
    return (
        f"Dataset “{dataset.name}” is kept as training history: {' and '.join(used)} "
        "learned from it, and their pages show its photos. Delete those first (jobs in the "
        "admin) to delete the dataset."
    )


def project_delete_refusal(*, project: Project) -> str:
    """Why ``project`` cannot be deleted now, in words; "" when it can. Workers write into
    its folders while one of its imports, training jobs or batches is under way."""
    importing = project.datasets.filter(status=Dataset.Status.IMPORTING)
    jobs = project.jobs.exclude(status__in=TrainingJob.FINISHED)
    batches = project.batches.exclude(status__in=BatchClassification.FINISHED)
    busy = [
        f"{_listed(noun, names)} {'are' if len(names) > 1 else 'is'} {doing}"
        for noun, names, doing in [
            ("dataset", [f"“{n}”" for n in importing.values_list("name", flat=True)], "importing"),
            ("training job", [f"#{pk}" for pk in jobs.values_list("pk", flat=True)], "under way"),
            ("batch", [f"#{pk}" for pk in batches.values_list("pk", flat=True)], "under way"),
        ]
        if names
    ]
    if not busy:
        return ""
    return (
        f"Project “{project.name}” is still at work: {'; '.join(busy)}. Cancel its jobs and "
        "batches (imports end by themselves), then delete it once they have stopped."
    )


def _listed(noun: str, names: list[str], limit: int = 10) -> str:
    """ "jobs #3, #4", "version v2", "jobs #1, … and 5 more"; "" for no names."""
    if not names:
        return ""
    plural = "es" if noun.endswith("ch") else "s"
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f"{noun}{plural if len(names) > 1 else ''} {', '.join(names[:limit])}{more}"


def dataset_samples(*, dataset: Dataset, per_class: int = 8) -> dict[str, list[str]]:
    """A few image paths (relative to the dataset folder) per class, for thumbnails."""
    from classifier.images import SUPPORTED_SUFFIXES

    samples: dict[str, list[str]] = {}
    for name in dataset.class_names:
        folder = dataset.path / name
        if not folder.is_dir():
            continue
        files = sorted(
            p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES
        )
        samples[name] = [f"{name}/{p.name}" for p in files[:per_class]]
    return samples


def job_history(*, job: TrainingJob | None) -> dict[str, list]:
    """The job's finished epochs as chart series: epoch, loss, val_loss, accuracy, val_accuracy."""
    series: dict[str, list] = {
        "epoch": [],
        "loss": [],
        "val_loss": [],
        "accuracy": [],
        "val_accuracy": [],
    }
    if job is None:
        return series
    for record in job.epochs.order_by("epoch"):
        series["epoch"].append(record.epoch)
        series["loss"].append(record.loss)
        series["val_loss"].append(record.val_loss)
        series["accuracy"].append(record.accuracy)
        series["val_accuracy"].append(record.val_accuracy)
    return series


def rollback_target(*, project: Project) -> ModelVersion | None:
    """The version a rollback re-activates: the one that was active before the current one,
    from the activation log; None when nothing is active, nothing came before, or that
    version has been deleted."""
    current = ModelVersion.objects.filter(project=project, is_active=True).first()
    if current is None:
        return None
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
    if event is None:
        return None
    return ModelVersion.objects.filter(project=project, number=event.previous_number).first()


def activation_log(*, project: Project, limit: int | None = 50) -> QuerySet[ActivationEvent]:
    """The project's activations, roll-backs and deletions, newest first (all of them when
    ``limit`` is None)."""
    events = ActivationEvent.objects.filter(project=project).select_related("user")
    return events if limit is None else events[:limit]


def classify_projects() -> QuerySet[Project]:
    """Projects that have an active version, i.e. that can classify a photo now."""
    return Project.objects.filter(versions__is_active=True).order_by("name")


# --- Batches ------------------------------------------------------------------------------


def batch_list(
    *, project: Project | None = None, limit: int | None = None
) -> QuerySet[BatchClassification]:
    batches = BatchClassification.objects.select_related("project", "version", "created_by")
    if project is not None:
        batches = batches.filter(project=project)
    return batches[:limit] if limit else batches


def batch_label_counts(*, batch: BatchClassification) -> list[dict[str, Any]]:
    """[{label, count, percent}] of the batch's answers so far, most frequent first."""
    counts = list(
        batch.predictions.values("label").annotate(count=Count("id")).order_by("-count", "label")
    )
    total = sum(row["count"] for row in counts) or 1
    return [{**row, "percent": round(100 * row["count"] / total, 1)} for row in counts]


def batch_results(
    *, batch: BatchClassification, rows: int = 100, errors: int = 1000
) -> dict[str, list[dict[str, str]]]:
    """The first ``rows`` rows of a batch's ``results.csv`` and up to ``errors`` of its
    refused files (file, error): all of a succeeded batch's, the partial ones of a batch
    cancelled while it ran; empty lists otherwise."""
    out: dict[str, list[dict[str, str]]] = {"rows": [], "errors": []}
    path = batch.path / "results.csv"
    if not batch.has_results or not path.is_file():
        return out
    wanted_errors = min(batch.failed, errors)
    with open(path, newline="", encoding="utf-8") as handle:
        for cells in csv.DictReader(handle):
            # A text cell that starts with an apostrophe was escaped against spreadsheet
            # formulas (services._csv_text_cell).
            row = {
                key: value[1:] if value.startswith("'") else value for key, value in cells.items()
            }
            if len(out["rows"]) < rows:
                out["rows"].append(row)
            if row["error"] and len(out["errors"]) < wanted_errors:
                out["errors"].append(row)
            if len(out["rows"]) >= rows and len(out["errors"]) >= wanted_errors:
                break
    return out
