"""Batch claims (one attempt at a time, an attempt that lost its claim stops), cancelling
and deleting batches."""

from __future__ import annotations

import csv
import logging
import shutil
from datetime import timedelta

import pytest
from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from tests.images import jpeg_bytes
from webapp import services
from webapp.models import BatchClassification, Prediction


def _batch(project, user=None) -> BatchClassification:
    files = [SimpleUploadedFile(f"p{i}.jpg", jpeg_bytes()) for i in range(3)]
    return services.batch_create(project=project, files=files, user=user, check_queue=False)


def _later():
    return timezone.now() + timedelta(seconds=settings.GRAFT_HEARTBEAT_TIMEOUT + 1)


def test_it_claims_a_batch_once(served_project):
    batch = _batch(served_project)

    first = services.batch_claim(batch_id=batch.pk)
    second = services.batch_claim(batch_id=batch.pk)

    assert first is not None and first.attempts == 1 and first.status == "running"
    assert second is None
    assert services.batch_run(batch_id=batch.pk) is None  # a duplicate message does nothing


def test_it_leaves_a_batch_alone_while_it_makes_progress(served_project):
    batch = _batch(served_project)
    services.batch_claim(batch_id=batch.pk)

    assert services.batches_reconcile() == {"requeued": [], "failed": [], "reenqueued": []}
    batch.refresh_from_db()
    assert batch.status == "running"


def test_it_stops_an_attempt_that_was_requeued_meanwhile(served_project, monkeypatch):
    from classifier.serving import Predictor

    batch = _batch(served_project)
    predict = Predictor.predict_array
    retried = []

    def silent_too_long(self, pixels):
        # While this attempt classifies its first chunk, the reconcile decides it is lost
        # and a second attempt claims the batch.
        if not retried:
            retried.append(services.batches_reconcile(now=_later()))
            services.batch_claim(batch_id=batch.pk)
        return predict(self, pixels)

    monkeypatch.setattr(Predictor, "predict_array", silent_too_long)

    assert services.batch_run(batch_id=batch.pk) is None

    batch.refresh_from_db()
    assert retried[0]["requeued"] == [batch.pk]
    assert (batch.status, batch.attempts, batch.done) == ("running", 2, 0)
    assert not Prediction.objects.exists()
    assert not list(batch.path.glob("results.*"))


# --- Cancelling ----------------------------------------------------------------------------


def _cancel_during_first_chunk(monkeypatch, batch: BatchClassification, user) -> None:
    """Classify one photo per chunk, and ask for a cancel while the first one is classified."""
    from classifier.serving import Predictor

    predict = Predictor.predict_array
    asked = []

    def and_cancel(self, pixels):
        if not asked:
            asked.append(services.batch_cancel(batch=batch, user=user))
        return predict(self, pixels)

    monkeypatch.setattr(services, "BATCH_CHUNK", 1)
    monkeypatch.setattr(Predictor, "predict_array", and_cancel)


def test_it_cancels_a_queued_batch_at_once(served_project, viewer):
    batch = _batch(served_project, viewer)

    cancelled = services.batch_cancel(batch=batch, user=viewer)

    assert cancelled.status == "cancelled" and cancelled.is_finished
    assert cancelled.finished_at is not None
    assert cancelled.error == "Cancelled before it started."
    assert not cancelled.has_results


def test_it_does_nothing_when_a_cancelled_batchs_message_arrives(served_project, viewer):
    batch = _batch(served_project, viewer)
    services.batch_cancel(batch=batch, user=viewer)

    assert services.batch_claim(batch_id=batch.pk) is None
    assert services.batch_run(batch_id=batch.pk) is None  # the message, delivered anyway

    batch.refresh_from_db()
    assert (batch.status, batch.attempts, batch.done) == ("cancelled", 0, 0)
    assert not Prediction.objects.exists()
    assert not list(batch.path.glob("results.*"))


def test_it_stops_a_running_batch_between_chunks_and_keeps_the_results_so_far(
    served_project, viewer, monkeypatch
):
    batch = _batch(served_project, viewer)
    _cancel_during_first_chunk(monkeypatch, batch, viewer)

    finished = services.batch_run(batch_id=batch.pk)

    assert (finished.status, finished.done, finished.total) == ("cancelled", 1, 3)
    assert finished.error == "Cancelled while running."
    assert finished.has_results and finished.results_are_partial
    with open(finished.path / "results.csv", newline="") as handle:
        assert [row["file"] for row in csv.DictReader(handle)] == ["p0.jpg"]
    assert (finished.path / "results.json").is_file()
    assert list(Prediction.objects.values_list("filename", "batch")) == [("p0.jpg", batch.pk)]


def test_it_asks_a_running_batch_to_stop_and_keeps_it_running_until_it_does(served_project, viewer):
    batch = _batch(served_project, viewer)
    services.batch_claim(batch_id=batch.pk)

    asked = services.batch_cancel(batch=batch, user=viewer)

    assert (asked.status, asked.cancel_requested, asked.can_cancel) == ("running", True, False)
    assert services.batches_reconcile() == {"requeued": [], "failed": [], "reenqueued": []}


@pytest.mark.parametrize("outcome", ["succeeded", "failed", "cancelled"])
def test_it_refuses_to_cancel_a_finished_batch(served_project, viewer, outcome):
    batch = _batch(served_project, viewer)
    BatchClassification.objects.filter(pk=batch.pk).update(status=outcome, error="as it was")

    with pytest.raises(services.WrongStatus, match=f"has already {outcome}; there is nothing"):
        services.batch_cancel(batch=batch, user=viewer)

    batch.refresh_from_db()
    assert (batch.status, batch.error, batch.cancel_requested) == (outcome, "as it was", False)


def test_it_lets_a_trainer_cancel_someone_elses_batch(served_project, viewer, trainer):
    batch = _batch(served_project, viewer)

    assert services.batch_cancel(batch=batch, user=trainer).status == "cancelled"


def test_it_refuses_a_cancel_from_another_user_without_the_permission(
    served_project, viewer, outsider
):
    batch = _batch(served_project, viewer)

    with pytest.raises(PermissionDenied, match="Only the person who started batch"):
        services.batch_cancel(batch=batch, user=outsider)

    batch.refresh_from_db()
    assert (batch.status, batch.cancel_requested) == ("queued", False)


def test_it_records_who_cancelled_a_queued_batch(served_project, viewer, trainer):
    batch = _batch(served_project, viewer)

    cancelled = services.batch_cancel(batch=batch, user=trainer)

    assert (cancelled.status, cancelled.cancelled_by) == ("cancelled", trainer)
    assert cancelled.cancelled_by_label == "Cancelled by trent"


def test_it_records_who_asked_a_running_batch_to_stop_and_keeps_the_first(
    served_project, viewer, trainer
):
    batch = _batch(served_project, viewer)
    services.batch_claim(batch_id=batch.pk)
    services.batch_cancel(batch=batch, user=viewer)

    again = services.batch_cancel(batch=batch, user=trainer)

    assert (again.status, again.cancel_requested, again.cancelled_by) == ("running", True, viewer)
    assert again.cancelled_by_label == "Cancel requested by victor"


def test_it_keeps_who_asked_when_a_running_batch_stops(served_project, viewer, monkeypatch):
    batch = _batch(served_project, viewer)
    _cancel_during_first_chunk(monkeypatch, batch, viewer)

    finished = services.batch_run(batch_id=batch.pk)

    assert (finished.status, finished.cancelled_by) == ("cancelled", viewer)


def test_it_records_nobody_when_the_system_cancels_a_batch(served_project, viewer):
    batch = _batch(served_project, viewer)

    cancelled = services.batch_cancel(batch=batch, user=None)

    assert (cancelled.status, cancelled.cancelled_by) == ("cancelled", None)
    assert cancelled.cancelled_by_label == ""


def test_it_keeps_the_systems_stop_request_when_someone_asks_again(served_project, viewer, trainer):
    batch = _batch(served_project, viewer)
    services.batch_claim(batch_id=batch.pk)
    services.batch_cancel(batch=batch, user=None)

    again = services.batch_cancel(batch=batch, user=trainer)

    assert (again.status, again.cancel_requested, again.cancelled_by) == ("running", True, None)


def test_it_records_nobody_when_a_finished_batch_is_not_cancelled(served_project, viewer):
    batch = _batch(served_project, viewer)
    BatchClassification.objects.filter(pk=batch.pk).update(status="succeeded")

    with pytest.raises(services.WrongStatus):
        services.batch_cancel(batch=batch, user=viewer)

    batch.refresh_from_db()
    assert batch.cancelled_by is None


def test_it_cancels_a_batch_asked_to_stop_whose_worker_died(served_project, viewer):
    batch = _batch(served_project, viewer)
    services.batch_claim(batch_id=batch.pk)
    services.batch_cancel(batch=batch, user=viewer)

    report = services.batches_reconcile(now=_later())

    batch.refresh_from_db()
    assert report == {"requeued": [], "failed": [], "reenqueued": []}
    assert (batch.status, batch.attempts) == ("cancelled", 1)
    assert "its worker stopped before it could finish" in batch.error


def test_it_leaves_cancelled_batches_to_the_reconcile_alone(served_project, viewer):
    batch = _batch(served_project, viewer)
    services.batch_cancel(batch=batch, user=viewer)

    assert services.batches_reconcile(now=_later()) == {
        "requeued": [],
        "failed": [],
        "reenqueued": [],
    }
    batch.refresh_from_db()
    assert batch.status == "cancelled"


# --- Deleting -------------------------------------------------------------------------------


def test_it_deletes_a_finished_batch_and_keeps_its_predictions_unlinked(
    served_project, viewer, django_capture_on_commit_callbacks
):
    batch = services.batch_run(batch_id=_batch(served_project, viewer).pk)
    folder = batch.path
    assert batch.status == "succeeded" and (folder / "results.csv").is_file()

    with django_capture_on_commit_callbacks(execute=True):
        services.batch_delete(batch=batch, user=viewer)

    assert not BatchClassification.objects.exists()
    assert not folder.exists()
    assert Prediction.objects.count() == 3
    assert not Prediction.objects.filter(batch__isnull=False).exists()


@pytest.mark.parametrize("status", ["queued", "running"])
def test_it_refuses_to_delete_a_batch_that_has_not_finished(
    served_project, viewer, status, django_capture_on_commit_callbacks
):
    batch = _batch(served_project, viewer)
    BatchClassification.objects.filter(pk=batch.pk).update(status=status)

    with (
        django_capture_on_commit_callbacks(execute=True),
        pytest.raises(services.WrongStatus, match=f"is {status}; cancel it first"),
    ):
        services.batch_delete(batch=batch, user=viewer)

    assert BatchClassification.objects.filter(pk=batch.pk).exists()
    assert (batch.path / "inputs").is_dir()


def test_it_refuses_a_delete_from_another_user_without_the_permission(
    served_project, viewer, outsider
):
    batch = _batch(served_project, viewer)
    services.batch_cancel(batch=batch, user=viewer)

    with pytest.raises(PermissionDenied):
        services.batch_delete(batch=batch, user=outsider)

    assert BatchClassification.objects.filter(pk=batch.pk).exists()


def test_it_deletes_a_batch_whose_folder_is_already_gone(
    served_project, viewer, django_capture_on_commit_callbacks
):
    batch = _batch(served_project, viewer)
    services.batch_cancel(batch=batch, user=viewer)
    shutil.rmtree(batch.path)

    with django_capture_on_commit_callbacks(execute=True):
        services.batch_delete(batch=batch, user=viewer)

    assert not BatchClassification.objects.exists()


def test_it_deletes_the_row_and_logs_a_folder_that_cannot_be_removed(
    served_project, viewer, monkeypatch, caplog, django_capture_on_commit_callbacks
):
    batch = services.batch_run(batch_id=_batch(served_project, viewer).pk)

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(shutil, "rmtree", refuse)
    with (
        caplog.at_level(logging.WARNING, logger="webapp.services"),
        django_capture_on_commit_callbacks(execute=True),
    ):
        services.batch_delete(batch=batch, user=viewer)

    assert not BatchClassification.objects.exists()
    assert Prediction.objects.count() == 3
    assert (batch.path / "results.csv").is_file()  # left behind, and said so
    assert f"Batch {batch.pk} is deleted, but its folder" in caplog.text
