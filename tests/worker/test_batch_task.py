"""Batch classification on real workers and a real Redis: claims, lost messages, lost workers."""

from __future__ import annotations

import io
import zipfile
from datetime import datetime, timedelta

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from tests.images import jpeg_bytes
from tests.waiting import wait_for
from webapp import services
from webapp.models import BatchClassification, Prediction
from worker.tasks import classify_batch, reconcile_jobs

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def start_batch(project) -> BatchClassification:
    """Two photos and one unreadable file, enqueued (on commit) like an upload."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("red/one.jpg", jpeg_bytes())
        archive.writestr("blue/two.jpg", jpeg_bytes((20, 20, 200)))
        archive.writestr("broken.png", b"not a png")
    upload = SimpleUploadedFile("photos.zip", buffer.getvalue())
    batch = services.batch_create(project=project, files=[upload])
    batch.refresh_from_db()
    return batch


def later() -> datetime:
    """A moment past the timeout, so the reconcile judges without anyone waiting for it."""
    return timezone.now() + timedelta(seconds=settings.GRAFT_HEARTBEAT_TIMEOUT + 1)


def flush_broker() -> None:
    from worker import app

    with app.connection_for_write() as conn:
        conn.default_channel.client.flushdb()


def wait_for_batch(batch: BatchClassification, *statuses: str) -> BatchClassification:
    def reached() -> BatchClassification | None:
        batch.refresh_from_db()
        return batch if batch.status in statuses else None

    wait_for(reached, 90, f"batch {batch.pk} to become {' or '.join(statuses)}")
    return batch


def test_it_reenqueues_a_batch_the_broker_lost_and_classifies_it_once(served_project, start_worker):
    batch = start_batch(served_project)
    flush_broker()

    assert services.batches_reconcile()["reenqueued"] == []  # too recent to judge
    assert services.batches_reconcile(now=later())["reenqueued"] == [batch.pk]
    assert services.batches_reconcile(now=later())["reenqueued"] == []  # its message waits now

    start_worker(queues="default")
    wait_for_batch(batch, "succeeded", "failed")
    assert batch.status == "succeeded", batch.error
    assert (batch.attempts, batch.done, batch.failed) == (1, 3, 1)
    assert Prediction.objects.filter(batch=batch).count() == 2
    assert (batch.path / "results.csv").is_file()
    assert reconcile_jobs.delay().get(timeout=60) == {
        "training": {"requeued": [], "failed": [], "reenqueued": []},
        "batches": {"requeued": [], "failed": [], "reenqueued": []},
        "datasets": {"requeued": [], "failed": [], "reenqueued": []},
        "int8": [],
    }


def test_it_classifies_a_batch_once_when_its_message_arrives_twice(served_project, start_worker):
    batch = start_batch(served_project)
    duplicate = classify_batch.apply_async(args=[batch.pk], queue="default")

    start_worker(queues="default")

    first = classify_batch.AsyncResult(batch.celery_task_id)
    assert sorted([first.get(timeout=90), duplicate.get(timeout=90)]) == ["skipped", "succeeded"]
    batch.refresh_from_db()
    assert (batch.status, batch.attempts, batch.done) == ("succeeded", 1, 3)
    assert Prediction.objects.filter(batch=batch).count() == 2


def test_it_requeues_a_batch_whose_worker_stopped_and_starts_it_over(served_project, start_worker):
    batch = start_batch(served_project)
    lost = services.batch_claim(batch_id=batch.pk)  # a worker took it, logged one, then died
    Prediction.objects.create(
        project=served_project,
        version_number=1,
        image_sha256="0" * 64,
        label="cat",
        confidence=0.9,
        latency_ms=1.0,
        source=Prediction.Source.BATCH,
        batch=lost,
    )
    BatchClassification.objects.filter(pk=batch.pk).update(done=1)

    assert services.batches_reconcile()["requeued"] == []  # silent, but not for long enough
    assert services.batches_reconcile(now=later())["requeued"] == [batch.pk]
    batch.refresh_from_db()
    assert (batch.status, batch.done) == ("queued", 0)
    assert "Attempt 1 was lost" in batch.error

    start_worker(queues="default")
    wait_for_batch(batch, "succeeded", "failed")
    assert batch.status == "succeeded", batch.error
    assert (batch.attempts, batch.done, batch.failed, batch.error) == (2, 3, 1, "")
    assert Prediction.objects.filter(batch=batch).count() == 2  # the lost attempt's one is gone


def test_it_fails_a_batch_cleanly_after_its_last_attempt(served_project, start_worker, settings):
    settings.GRAFT_JOB_MAX_ATTEMPTS = 1
    batch = start_batch(served_project)
    services.batch_claim(batch_id=batch.pk)  # its only attempt, lost

    report = services.batches_reconcile(now=later())

    assert report == {"requeued": [], "failed": [batch.pk], "reenqueued": []}
    batch.refresh_from_db()
    assert batch.status == "failed" and batch.finished_at is not None
    assert "stopped making progress on each of its 1 attempt " in batch.error
    assert "upload the photos again" in batch.error
    start_worker(queues="default")
    assert classify_batch.AsyncResult(batch.celery_task_id).get(timeout=90) == "skipped"
    batch.refresh_from_db()
    assert batch.status == "failed"
    assert not Prediction.objects.exists()
    assert not (batch.path / "results.csv").exists()
    assert services.batches_reconcile(now=later())["failed"] == []
