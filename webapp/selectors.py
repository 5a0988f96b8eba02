"""Reads: the queries pages and the API display. No writes here."""

from __future__ import annotations

from django.db.models import Count, QuerySet

from webapp.models import Dataset, ModelVersion, Prediction, Project, TrainingJob


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
    predictions = Prediction.objects.select_related("project", "user")
    if project is not None:
        predictions = predictions.filter(project=project)
    return predictions[:limit]
