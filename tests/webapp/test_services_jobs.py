"""Training job services: cancelling (queued jobs at once, running ones at their next batch,
and who asked first), and keeping an attempt that lost its claim away from the retry."""

from __future__ import annotations

import json
from datetime import timedelta
from functools import partial

import pytest
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import ValidationError
from django.utils import timezone

from tests.factories import make_job, make_project, make_version
from webapp import services
from webapp.models import EpochRecord, TrainingJob


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


# An attempt judged lost (silent for longer than GRAFT_HEARTBEAT_TIMEOUT, in a long export,
# say) may be alive after all; once the job is requeued and claimed again, the retry owns it.


def _retried(project, dataset) -> TrainingJob:
    """A job whose first attempt was judged lost, requeued and claimed again: attempt 2 runs."""
    job = _job(project, dataset)
    assert services.training_job_claim(job_id=job.pk).attempts == 1
    later = timezone.now() + timedelta(seconds=settings.GRAFT_HEARTBEAT_TIMEOUT + 1)
    assert services.training_jobs_reconcile(now=later)["requeued"] == [job.pk]
    retry = services.training_job_claim(job_id=job.pk)
    assert (retry.status, retry.attempts) == ("running", 2)
    return retry


def _staged(data_dir, job: TrainingJob, attempt: int):
    staged = data_dir / "models" / ".staging" / f"job-{job.pk}-{attempt}"
    staged.mkdir(parents=True)
    (staged / "model.tflite").write_bytes(b"model")
    (staged / "labels.json").write_text('["a", "b"]')
    (staged / "metadata.json").write_text(json.dumps({"files": {}}))
    return staged


def test_it_keeps_a_lost_attempts_progress_and_epochs_out_of_the_retry(project, dataset):
    job = _retried(project, dataset)
    services.training_job_progress(job_id=job.pk, attempt=2, phase="training", progress=0.3)

    stop = services.training_job_progress(
        job_id=job.pk, attempt=1, phase="exporting", progress=0.99
    )
    services.training_job_record_epoch(job_id=job.pk, attempt=1, epoch=1, logs={"loss": 0.5})

    job.refresh_from_db()
    assert stop is True
    assert (job.phase, job.progress) == ("training", 0.3)
    assert not EpochRecord.objects.filter(job=job).exists()


def test_it_lets_the_attempt_that_holds_the_job_write_progress_and_epochs(project, dataset):
    job = _retried(project, dataset)

    stop = services.training_job_progress(job_id=job.pk, attempt=2, progress=0.5)
    services.training_job_record_epoch(job_id=job.pk, attempt=2, epoch=1, logs={"loss": 0.5})

    job.refresh_from_db()
    assert (stop, job.progress) == (False, 0.5)
    assert EpochRecord.objects.get(job=job).loss == 0.5


@pytest.mark.parametrize(
    ("end", "status"),
    [
        (partial(services.training_job_fail, error="Out of memory."), "failed"),
        (services.training_job_mark_cancelled, "cancelled"),
    ],
    ids=["fail", "cancel"],
)
def test_it_lets_only_the_attempt_that_holds_the_job_end_it(project, dataset, end, status):
    job = _retried(project, dataset)

    assert end(job_id=job.pk, attempt=1) is False
    job.refresh_from_db()
    assert (job.status, job.finished_at) == ("running", None)

    assert end(job_id=job.pk, attempt=2) is True
    job.refresh_from_db()
    assert job.status == status


def test_it_makes_no_version_of_an_attempt_that_lost_its_claim(project, dataset, data_dir):
    job = _retried(project, dataset)
    staged = _staged(data_dir, job, 1)

    version = services.training_job_succeed(
        job_id=job.pk, attempt=1, staged_dir=staged, result={"class_names": ["a", "b"]}
    )

    job.refresh_from_db()
    assert version is None
    assert (job.status, job.attempts) == ("running", 2)
    assert not project.versions.exists()
    assert not staged.exists()

    retry = services.training_job_succeed(
        job_id=job.pk, attempt=2, staged_dir=_staged(data_dir, job, 2), result={}
    )
    job.refresh_from_db()
    assert (retry.number, job.status) == (1, "succeeded")


def test_it_leaves_a_cancel_to_the_attempt_that_holds_the_job(project, dataset, data_dir, trainer):
    job = _retried(project, dataset)
    services.training_job_cancel(job=job, user=trainer)

    version = services.training_job_succeed(
        job_id=job.pk, attempt=1, staged_dir=_staged(data_dir, job, 1), result={}
    )

    job.refresh_from_db()
    assert version is None
    assert (job.status, job.cancel_requested) == ("running", True)


def test_it_never_writes_over_a_folder_another_projects_version_has(project, dataset, data_dir):
    # A project renamed in the admin (before slugs were fixed) kept its folders under its
    # old slug, which a new project may then have.
    other = make_project(name="Old", slug="old")
    kept = make_version(other, 1, with_files=True, directory=f"models/{project.slug}/v1")
    job = make_job(project, dataset, status="running", attempts=1)

    version = services.training_job_succeed(
        job_id=job.pk, attempt=1, staged_dir=_staged(data_dir, job, 1), result={}
    )

    assert version.number == 1 and version.path != kept.path
    assert (version.path / "model.tflite").read_bytes() == b"model"
    assert (kept.path / "model.tflite").read_bytes() == b"x" * 10
