"""Version services: numbering, activation, rollback and deletion."""

from __future__ import annotations

import json
import shutil

import pytest
from django.core.exceptions import ValidationError

from classifier.serving import sha256_file
from tests.factories import make_job, make_version
from webapp import services
from webapp.models import ActivationEvent, ModelVersion, TrainingJob


def _running_job(project, dataset) -> TrainingJob:
    return make_job(project, dataset, status=TrainingJob.Status.RUNNING, config={"epochs": 1})


def _succeed(job: TrainingJob, data_dir) -> ModelVersion:
    staged = data_dir / "models" / ".staging" / f"job-{job.pk}-1"
    staged.mkdir(parents=True)
    (staged / "model.tflite").write_bytes(b"model")
    (staged / "labels.json").write_text('["a", "b"]')
    (staged / "metadata.json").write_text(json.dumps({"files": {}}))
    return services.training_job_succeed(
        job_id=job.pk, staged_dir=staged, result={"class_names": ["a", "b"]}
    )


def test_it_never_reuses_the_number_of_a_deleted_version(project, dataset, data_dir):
    first = _succeed(_running_job(project, dataset), data_dir)
    second = _succeed(_running_job(project, dataset), data_dir)
    services.model_version_delete(version=second)

    third = _succeed(_running_job(project, dataset), data_dir)

    assert (first.number, second.number, third.number) == (1, 2, 3)


@pytest.fixture
def served(project, data_dir) -> tuple[ModelVersion, ModelVersion]:
    """v1 (active) and v2, whose recorded checksums match their files."""
    made = []
    for number in (1, 2):
        version = make_version(project, number, with_files=True)
        files = {
            name: {"sha256": sha256_file(version.path / name), "bytes": 10}
            for name in ("model.keras", "model.tflite", "labels.json")
        }
        ModelVersion.objects.filter(pk=version.pk).update(files=files)
        version.refresh_from_db()
        made.append(version)
    services.model_version_activate(version=made[0])
    return made[0], made[1]


@pytest.mark.parametrize("damage", ["missing", "changed"])
def test_it_refuses_to_activate_a_version_whose_files_are_damaged(project, served, damage):
    v1, v2 = served
    if damage == "missing":
        (v2.path / "model.tflite").unlink()
    else:
        (v2.path / "model.tflite").write_bytes(b"y" * 10)

    with pytest.raises(ValidationError, match="v2 cannot be activated.*model.tflite.*v1 stays"):
        services.model_version_activate(version=v2)

    assert project.active_version == v1
    assert not ActivationEvent.objects.filter(version_number=2).exists()


def test_it_activates_a_version_whose_files_are_intact(project, served):
    services.model_version_activate(version=served[1])

    assert project.active_version == served[1]


def test_it_refuses_to_roll_back_to_a_version_whose_files_are_gone(project, served):
    v1, v2 = served
    services.model_version_activate(version=v2)
    shutil.rmtree(v1.path)

    with pytest.raises(ValidationError, match="v1 cannot be activated.*v2 stays active"):
        services.model_version_rollback(project=project)

    assert project.active_version == v2
