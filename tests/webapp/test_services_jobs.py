"""Cancelling training jobs: queued ones at once, running ones at their next batch, and who
asked first."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import ValidationError

from tests.factories import make_job
from webapp import services
from webapp.models import TrainingJob


def _job(project, dataset, status: str = "queued") -> TrainingJob:
    return make_job(project, dataset, status=status)


def test_it_cancels_a_queued_job_and_records_who_did(project, dataset, trainer):
    job = _job(project, dataset)

    cancelled = services.training_job_cancel(job=job, user=trainer)

    assert (cancelled.status, cancelled.cancel_requested) == ("cancelled", True)
    assert cancelled.error == "Cancelled before it started."
    assert cancelled.cancelled_by == trainer
    assert cancelled.cancelled_by_label == "Cancelled by trent"


def test_it_asks_a_running_job_to_stop_and_records_who_asked(project, dataset, trainer):
    job = _job(project, dataset, "running")

    asked = services.training_job_cancel(job=job, user=trainer)

    assert (asked.status, asked.cancel_requested, asked.can_cancel) == ("running", True, False)
    assert asked.cancelled_by == trainer
    assert asked.cancelled_by_label == "Cancel requested by trent"


def test_it_keeps_the_first_canceller_when_a_running_job_is_asked_again(
    project, dataset, trainer, admin_user
):
    job = _job(project, dataset, "running")
    services.training_job_cancel(job=job, user=trainer)

    again = services.training_job_cancel(job=job, user=admin_user)

    assert (again.status, again.cancel_requested) == ("running", True)
    assert again.cancelled_by == trainer


def test_it_keeps_the_first_canceller_when_the_job_stops(project, dataset, trainer):
    job = _job(project, dataset, "running")
    services.training_job_cancel(job=job, user=trainer)

    assert services.training_job_mark_cancelled(job_id=job.pk)

    job.refresh_from_db()
    assert (job.status, job.cancelled_by) == ("cancelled", trainer)
    assert job.cancelled_by_label == "Cancelled by trent"


def test_it_records_nobody_when_the_system_cancels(project, dataset):
    job = _job(project, dataset)

    cancelled = services.training_job_cancel(job=job)

    assert (cancelled.status, cancelled.cancelled_by) == ("cancelled", None)
    assert cancelled.cancelled_by_label == ""


def test_it_keeps_the_systems_stop_request_when_someone_asks_again(project, dataset, trainer):
    job = _job(project, dataset, "running")
    services.training_job_cancel(job=job)

    again = services.training_job_cancel(job=job, user=trainer)

    assert (again.status, again.cancel_requested, again.cancelled_by) == ("running", True, None)


def test_it_records_nobody_for_a_user_who_is_not_logged_in(project, dataset):
    job = _job(project, dataset, "running")

    asked = services.training_job_cancel(job=job, user=AnonymousUser())

    assert asked.cancel_requested and asked.cancelled_by is None


@pytest.mark.parametrize("outcome", ["succeeded", "failed", "cancelled"])
def test_it_refuses_to_cancel_a_finished_job(project, dataset, trainer, outcome):
    job = _job(project, dataset, outcome)

    with pytest.raises(services.WrongStatus, match=f"already {outcome}"):
        services.training_job_cancel(job=job, user=trainer)

    job.refresh_from_db()
    assert (job.status, job.cancel_requested, job.cancelled_by) == (outcome, False, None)


def test_it_makes_no_version_of_a_job_cancelled_after_its_last_batch(
    project, dataset, trainer, data_dir
):
    job = make_job(project, dataset, status="running", activate_on_success=True)
    services.training_job_cancel(job=job, user=trainer)  # while it evaluates or exports
    staged = data_dir / "models" / ".staging" / f"job-{job.pk}-1"
    staged.mkdir(parents=True)
    (staged / "metadata.json").write_text('{"files": {}}')

    version = services.training_job_succeed(
        job_id=job.pk, staged_dir=staged, result={"class_names": ["a", "b"]}
    )

    job.refresh_from_db()
    assert version is None
    assert (job.status, job.cancelled_by_label) == ("cancelled", "Cancelled by trent")
    assert not project.versions.exists()
    assert not staged.exists()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"epochs": 2.5}, "epochs must be a whole number"),
        ({"epochs": True}, "epochs must be a whole number"),
        ({"image_size": "224"}, "image_size must be a whole number"),
        ({"learning_rate": "0.001"}, "learning_rate must be a number"),
        ({"augment": "no"}, "augment must be true or false"),
        ({"seed": -1}, "seed must not be negative"),
    ],
)
def test_it_refuses_a_config_of_the_wrong_type_before_queueing(project, dataset, config, message):
    with pytest.raises(ValidationError, match=message):
        services.training_job_create(
            project=project, dataset=dataset, config=config, check_queue=False
        )

    assert not TrainingJob.objects.exists()
