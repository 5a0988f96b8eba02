"""Training pages: the start form, the live job page, cancelling."""

from __future__ import annotations

from datetime import timedelta
from unittest import mock

import pytest
from django.urls import reverse
from django.utils import timezone

from tests.factories import make_dataset, make_job, make_project, make_version, role_group
from tests.html_checks import dangling_descriptions, duplicate_ids, unlabelled_controls
from webapp import services
from webapp.models import EpochRecord, TrainingJob


@pytest.fixture
def queue_up():
    with mock.patch("webapp.services._check_queue"):
        yield


def test_it_shows_the_recipe_defaults_with_advanced_folded(trainer_client, project, dataset):
    response = trainer_client.get(reverse("job_create", args=[project.slug]))
    content = response.content.decode()
    assert response.status_code == 200
    assert 'name="image_size" value="224"' in content
    assert 'name="head_units" value="1024,512"' in content
    assert '<details class="card" id="advanced" >' in content  # closed


def test_it_gives_screen_readers_every_label_and_help_text(trainer_client, project, dataset):
    """Django points each field with help text at "<id>_helptext"; the page had no such id."""
    page = trainer_client.get(reverse("job_create", args=[project.slug])).content.decode()
    assert "_helptext" in page
    assert dangling_descriptions(page) == []
    assert unlabelled_controls(page) == []
    assert duplicate_ids(page) == []


def test_it_forbids_training_without_the_permission(viewer_client, project, dataset):
    url = reverse("job_create", args=[project.slug])
    assert viewer_client.get(url).status_code == 403
    assert viewer_client.post(url, {"dataset": dataset.pk}).status_code == 403


def _form(dataset, **changes):
    data = {
        "dataset": dataset.pk,
        "epochs": 3,
        "weights": "none",
        "alpha": "0.35",
        "image_size": 32,
        "batch_size": 8,
        "learning_rate": 0.001,
        "head_units": "16",
        "dropout": 0.2,
        "build": "functional",
        "fine_tune_layers": 0,
        "fine_tune_epochs": 0,
        "fine_tune_learning_rate": 1e-5,
        "validation_split": 0.2,
        "seed": 1,
        "early_stopping_patience": 0,
        "use_feature_cache": "on",
    }
    return {**data, **changes}


def test_it_starts_a_job_with_the_chosen_config(
    trainer, trainer_client, project, dataset, queue_up
):
    trainer.groups.add(role_group("Version managers"))
    response = trainer_client.post(
        reverse("job_create", args=[project.slug]), _form(dataset, activate_on_success="on")
    )
    job = TrainingJob.objects.get()
    assert response.status_code == 302
    assert response["Location"] == job.get_absolute_url()
    assert job.config["image_size"] == 32
    assert job.config["head_units"] == [16]
    assert job.config["weights"] == "none"
    assert job.activate_on_success is True
    assert job.epochs_total == 3


def test_it_leaves_activating_on_success_to_version_managers(
    trainer, trainer_client, project, dataset, queue_up
):
    """Training is the Trainers' permission, activating the Version managers': a job that
    activates its version would let a trainer replace the version that serves."""
    url = reverse("job_create", args=[project.slug])
    assert 'name="activate_on_success"' not in trainer_client.get(url).content.decode()

    response = trainer_client.post(url, _form(dataset, activate_on_success="on"))

    assert response.status_code == 403
    assert not TrainingJob.objects.exists()
    trainer.groups.add(role_group("Version managers"))
    assert 'name="activate_on_success"' in trainer_client.get(url).content.decode()


def test_it_shows_field_errors_inline_and_opens_advanced(trainer_client, project, dataset):
    response = trainer_client.post(
        reverse("job_create", args=[project.slug]), _form(dataset, image_size=8, head_units="x")
    )
    content = response.content.decode()
    assert response.status_code == 400
    assert "greater than or equal to 32" in content
    assert "whole numbers separated by commas" in content
    assert 'id="advanced" open' in content
    assert not TrainingJob.objects.exists()


def test_it_shows_dataset_problems_from_the_service(trainer_client, project, queue_up):
    small = make_dataset(project, "tiny", class_counts={"a": 1, "b": 5})
    response = trainer_client.post(reverse("job_create", args=[project.slug]), _form(small))
    assert response.status_code == 400
    assert "too few in: a" in response.content.decode()


def test_it_refuses_another_projects_dataset(trainer_client, project, dataset, queue_up):
    other = make_dataset(make_project("Birds"), "birds")
    response = trainer_client.post(reverse("job_create", args=[project.slug]), _form(other))
    assert response.status_code == 400
    assert not TrainingJob.objects.exists()


def test_it_says_when_the_queue_is_down(trainer_client, project, dataset):
    down = services.QueueUnavailable("No training worker is running, so the job would never start.")
    with mock.patch("webapp.services._check_queue", side_effect=down):
        response = trainer_client.post(reverse("job_create", args=[project.slug]), _form(dataset))
    assert response.status_code == 503
    assert "No training worker is running" in response.content.decode()
    assert not TrainingJob.objects.exists()


def test_it_offers_to_add_a_dataset_when_none_is_ready(trainer_client, project):
    response = trainer_client.get(reverse("job_create", args=[project.slug]))
    assert b"no ready dataset" in response.content


def _running_job(project, dataset) -> TrainingJob:
    job = make_job(
        project,
        dataset,
        status=TrainingJob.Status.RUNNING,
        phase="training",
        epoch=2,
        epochs_total=5,
        batch=3,
        batches_total=10,
        progress=0.46,
        eta_seconds=75,
    )
    for epoch, loss in ((1, 0.9), (2, 0.5)):
        EpochRecord.objects.create(
            job=job, epoch=epoch, loss=loss, accuracy=0.6, val_loss=loss + 0.1, val_accuracy=0.5
        )
    return job


def test_it_shows_live_progress_and_history(viewer_client, project, dataset):
    job = _running_job(project, dataset)
    response = viewer_client.get(job.get_absolute_url())
    content = response.content.decode()
    assert 'value="46" max="100"' in content
    assert "batch 3 of 10" in content
    assert "1 min 15 s" in content
    assert 'hx-trigger="every 1s"' in content
    live = viewer_client.get(reverse("job_live", args=[job.pk]))
    assert b'<script id="job-history" type="application/json">' in live.content
    history = live.context["history"]
    assert history["epoch"] == [1, 2]
    assert history["val_loss"] == [1.0, 0.6]


def test_it_stops_polling_and_links_the_version_when_done(viewer_client, project, dataset):
    job = make_job(project, dataset, status=TrainingJob.Status.SUCCEEDED, progress=1.0)
    version = make_version(project, 1, job=job, is_active=True)
    live = viewer_client.get(reverse("job_live", args=[job.pk])).content.decode()
    assert "every 1s" not in live
    assert version.get_absolute_url() in live


def test_it_drops_the_last_batch_count_once_the_job_has_ended(viewer_client, project, dataset):
    """A finished job read "100 % · epoch 3 of 3 · batch 1 of 3": the batch of the last
    progress write, which the worker throttles to one a second."""
    job = make_job(
        project,
        dataset,
        status=TrainingJob.Status.SUCCEEDED,
        progress=1.0,
        epoch=3,
        epochs_total=3,
        batch=1,
        batches_total=3,
    )
    live = viewer_client.get(reverse("job_live", args=[job.pk])).content.decode()
    assert 'epoch <strong id="job-epoch">3</strong> of 3' in live
    assert "batch 1 of 3" not in live


def test_it_counts_the_photo_batches_while_it_reads_the_photos(viewer_client, project, dataset):
    """Extraction (one pass of the trunk, before the first epoch) read "epoch 0 of 3 · batch
    5 of 20"; the first epoch then briefly showed the extraction's batch count."""
    fields = {"status": TrainingJob.Status.RUNNING, "epochs_total": 3, "batches_total": 20}
    reading = make_job(project, dataset, phase="extracting", epoch=0, batch=5, **fields)
    starting = make_job(project, dataset, phase="training", epoch=0, batch=20, **fields)

    live = viewer_client.get(reverse("job_live", args=[reading.pk])).content.decode()
    assert "reading the photos: batch 5 of 20" in live
    assert "epoch" not in live.split('id="job-progress"')[1].split("</p>")[0]
    live = viewer_client.get(reverse("job_live", args=[starting.pk])).content.decode()
    assert 'epoch <strong id="job-epoch">0</strong> of 3' in live
    assert "batch 20 of 20" not in live


def test_it_shows_why_a_job_failed(viewer_client, project, dataset):
    job = make_job(project, dataset, status=TrainingJob.Status.FAILED, error="Out of memory.")
    assert b"Out of memory." in viewer_client.get(job.get_absolute_url()).content


def test_it_returns_404_for_an_unknown_job(viewer_client, db):
    assert viewer_client.get(reverse("job_detail", args=[999])).status_code == 404


def test_it_cancels_a_queued_job(trainer_client, trainer, project, dataset):
    job = make_job(project, dataset)
    response = trainer_client.post(reverse("job_cancel", args=[job.pk]), follow=True)
    job.refresh_from_db()
    assert job.status == TrainingJob.Status.CANCELLED
    assert job.cancelled_by == trainer
    assert b"cancelled" in response.content
    assert b'id="job-cancelled-by">Cancelled by trent</span>' in response.content


def test_it_asks_a_running_job_to_stop(trainer_client, trainer, project, dataset):
    job = _running_job(project, dataset)
    trainer_client.post(reverse("job_cancel", args=[job.pk]))
    job.refresh_from_db()
    assert job.cancel_requested and job.status == TrainingJob.Status.RUNNING
    assert job.cancelled_by == trainer
    live = trainer_client.get(reverse("job_live", args=[job.pk])).content.decode()
    assert "stopping after the current batch" in live
    assert 'id="job-cancelled-by">Cancel requested by trent</span>' in live


def test_it_shows_who_cancelled_a_job_to_everyone(viewer_client, trainer, project, dataset):
    job = make_job(project, dataset, status=TrainingJob.Status.RUNNING)
    services.training_job_cancel(job=job, user=trainer)
    services.training_job_mark_cancelled(job_id=job.pk)

    content = viewer_client.get(job.get_absolute_url()).content.decode()

    assert 'id="job-status">Cancelled' in content
    assert 'id="job-cancelled-by">Cancelled by trent</span>' in content


def test_it_names_nobody_when_the_system_cancelled_a_job(viewer_client, project, dataset):
    job = make_job(project, dataset)
    services.training_job_cancel(job=job)

    content = viewer_client.get(job.get_absolute_url()).content.decode()

    assert 'id="job-status">Cancelled' in content
    assert 'id="job-cancelled-by"' not in content


def test_it_says_a_finished_job_cannot_be_cancelled(trainer_client, project, dataset):
    job = make_job(project, dataset, status=TrainingJob.Status.SUCCEEDED)
    response = trainer_client.post(reverse("job_cancel", args=[job.pk]), follow=True)
    assert b"already succeeded" in response.content


def test_it_guards_cancel(viewer_client, trainer_client, project, dataset):
    job = make_job(project, dataset)
    assert viewer_client.post(reverse("job_cancel", args=[job.pk])).status_code == 403
    assert trainer_client.get(reverse("job_cancel", args=[job.pk])).status_code == 405
    job.refresh_from_db()
    assert job.status == TrainingJob.Status.QUEUED


def test_it_says_when_a_running_jobs_worker_has_gone_quiet(
    viewer_client, project, dataset, settings
):
    settings.GRAFT_HEARTBEAT_TIMEOUT = 120
    quiet = make_job(
        project,
        dataset,
        status=TrainingJob.Status.RUNNING,
        started_at=timezone.now() - timedelta(minutes=30),
        heartbeat_at=timezone.now() - timedelta(minutes=7, seconds=3),
    )
    healthy = make_job(
        project,
        dataset,
        status=TrainingJob.Status.RUNNING,
        started_at=timezone.now() - timedelta(minutes=30),
        heartbeat_at=timezone.now() - timedelta(seconds=20),
    )

    quiet_page = viewer_client.get(reverse("job_live", args=[quiet.pk])).content.decode()
    healthy_page = viewer_client.get(reverse("job_live", args=[healthy.pk])).content.decode()

    assert 'id="job-quiet"' in quiet_page
    assert "Its worker has not reported for 7 min " in quiet_page
    assert 'id="job-quiet"' not in healthy_page
