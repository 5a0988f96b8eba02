"""Deleting a project: every row by cascade, then every file it had on disk, and never
while one of its workers is still writing."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile

from tests.factories import make_dataset, make_job, make_project, make_version
from webapp import services
from webapp.models import BatchClassification, Dataset, ModelVersion, Prediction, Project

pytestmark = pytest.mark.django_db


def _filled(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "file").write_bytes(b"x")
    return path


def _project_with_files(name: str, data_dir: Path) -> dict[str, Path]:
    """A project whose dataset, version, batch, kept photo and job checkpoints are on disk."""
    from classifier.data import hash_cache_path

    project = make_project(name)
    dataset = make_dataset(project, directory=f"datasets/{project.slug}/1")
    job = make_job(project, dataset, status="succeeded")
    version = make_version(project, 1, job=job, dataset=dataset, with_files=True)
    batch = BatchClassification.objects.create(
        project=project, version=version, status="succeeded", directory=f"batches/{project.slug}"
    )
    prediction = Prediction(
        project=project, version_number=1, top=[], label="a", confidence=1, latency_ms=1
    )
    prediction.image.save("photo.jpg", ContentFile(b"jpeg"), save=True)
    scans = hash_cache_path(data_dir / "cache", dataset.path)
    scans.parent.mkdir(parents=True, exist_ok=True)
    scans.write_text("{}")
    lock = version.path.parent / f".{version.path.name}.quantize.lock"  # left by int8
    lock.write_bytes(b"")
    upload = data_dir / "incoming" / f"dataset-{dataset.pk}.zip"
    upload.parent.mkdir(exist_ok=True)
    upload.write_bytes(b"PK")
    return {
        "project": project,
        "dataset": _filled(dataset.path),
        "staging": _filled(dataset.path.parent / ".staging-1-0dead0"),
        "version": version.path,
        "batch": _filled(batch.path),
        "photo": Path(prediction.image.path),
        "checkpoints": _filled(data_dir / "checkpoints" / f"job-{job.pk}"),
        "scans": scans,
        "quantize lock": lock,
        "upload": upload,
    }


def test_it_deletes_a_project_with_its_rows_and_files(data_dir, django_capture_on_commit_callbacks):
    doomed = _project_with_files("Flowers", data_dir)
    kept = _project_with_files("Pets", data_dir)

    with django_capture_on_commit_callbacks() as callbacks:
        services.project_delete(project=doomed["project"])
    assert doomed["dataset"].is_dir()  # the files wait for the commit
    for callback in callbacks:
        callback()

    assert list(Project.objects.all()) == [kept["project"]]
    assert Dataset.objects.count() == ModelVersion.objects.count() == 1
    assert BatchClassification.objects.count() == Prediction.objects.count() == 1
    for name, path in doomed.items():
        if name != "project":
            assert not path.exists(), name
    assert not (data_dir / "datasets" / "flowers").exists()
    assert not (data_dir / "models" / "flowers").exists()
    for name, path in kept.items():
        if name != "project":
            assert path.exists(), name


@pytest.mark.parametrize(
    "busy,said",
    [
        ("import", "dataset “photos” is importing"),
        ("job", "training job #{job} is under way"),
        ("batch", "batch #{batch} is under way"),
    ],
)
def test_it_refuses_to_delete_a_project_at_work_and_keeps_everything(
    data_dir, busy, said, django_capture_on_commit_callbacks
):
    files = _project_with_files("Flowers", data_dir)
    project = files["project"]
    if busy == "import":
        Dataset.objects.update(status=Dataset.Status.IMPORTING)
    if busy == "job":
        project.jobs.update(status="running")
    if busy == "batch":
        project.batches.update(status="queued")

    with django_capture_on_commit_callbacks(execute=True), pytest.raises(ValidationError) as no:
        services.project_delete(project=project)

    job, batch = project.jobs.get().pk, project.batches.get().pk
    assert no.value.messages == [
        f"Project “Flowers” is still at work: {said.format(job=job, batch=batch)}. Cancel its "
        "jobs and batches (imports end by themselves), then delete it once they have stopped."
    ]
    assert Project.objects.filter(pk=project.pk).exists()
    for name, path in files.items():
        if name != "project":
            assert path.exists(), name


def test_it_keeps_folders_that_another_projects_rows_name(
    data_dir, django_capture_on_commit_callbacks
):
    """A project renamed in the admin keeps its folders under its old slug, so a new
    project with that slug shares ``datasets/<slug>/``; deleting it keeps the other's."""
    renamed = make_project("Roses", slug="roses")
    theirs = make_dataset(renamed, directory="datasets/flowers/1")
    _filled(theirs.path)
    project = make_project("Flowers")
    shared = make_dataset(project, "same", directory="datasets/flowers/1")
    ours = make_dataset(project, "ours", directory="datasets/flowers/2")
    _filled(ours.path)

    with django_capture_on_commit_callbacks(execute=True):
        services.project_delete(project=project)

    assert not ours.path.exists()
    assert list((data_dir / "datasets" / "flowers").iterdir()) == [theirs.path]
    assert (theirs.path / "file").is_file()
    assert shared.path == theirs.path
