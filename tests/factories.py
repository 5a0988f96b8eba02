"""Small helpers that create rows for tests (no factory library needed at this size)."""

from __future__ import annotations

import importlib

from django.contrib.auth.models import Group, Permission

from webapp.models import Dataset, ModelVersion, Project, TrainingJob

ROLE_GROUPS = importlib.import_module("webapp.migrations.0002_default_groups").GROUPS


def role_group(name: str) -> Group:
    """The migration's group, recreated when a transactional test's flush removed it."""
    group, created = Group.objects.get_or_create(name=name)
    if created:
        group.permissions.set(
            Permission.objects.filter(
                content_type__app_label="webapp", codename__in=ROLE_GROUPS[name]
            )
        )
    return group


def make_project(name: str = "Flowers", slug: str | None = None) -> Project:
    return Project.objects.create(name=name, slug=slug or name.lower().replace(" ", "-"))


def make_dataset(project: Project, name: str = "photos", **fields) -> Dataset:
    defaults = {
        "source": Dataset.Source.DIRECTORY,
        "status": Dataset.Status.READY,
        "directory": f"datasets/{project.slug}/{name}",
        "class_counts": {"a": 5, "b": 5},
        "image_count": 10,
    }
    return Dataset.objects.create(project=project, name=name, **{**defaults, **fields})


def make_job(project: Project, dataset: Dataset, **fields) -> TrainingJob:
    return TrainingJob.objects.create(project=project, dataset=dataset, **fields)


def make_version(
    project: Project, number: int, *, with_files: bool = False, **fields
) -> ModelVersion:
    """A version row; ``with_files`` also writes the files serving needs (placeholder bytes,
    no checksums recorded), so it can be activated."""
    defaults = {
        "directory": f"models/{project.slug}/v{number}",
        "class_names": ["a", "b"],
    }
    version = ModelVersion.objects.create(project=project, number=number, **{**defaults, **fields})
    if with_files:
        version.path.mkdir(parents=True)
        for name in ModelVersion.DOWNLOADS:
            (version.path / name).write_bytes(b"x" * 10)
    return version
