"""Version services: numbering, activation, rollback and deletion."""

from __future__ import annotations

import json

from tests.factories import make_job
from webapp import services
from webapp.models import ModelVersion, TrainingJob


def _running_job(project, dataset) -> TrainingJob:
    return make_job(project, dataset, status=TrainingJob.Status.RUNNING, config={"epochs": 1})


def _succeed(job: TrainingJob, data_dir) -> ModelVersion:
    staged = data_dir / "models" / ".staging" / f"job-{job.pk}-1"
    staged.mkdir(parents=True)
    (staged / "model.tflite").write_bytes(b"model")
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
