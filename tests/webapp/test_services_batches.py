"""Batch claims: one attempt at a time, and an attempt that lost its claim stops."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from tests.images import jpeg_bytes
from webapp import services
from webapp.models import BatchClassification, Prediction


def _batch(project) -> BatchClassification:
    files = [SimpleUploadedFile(f"p{i}.jpg", jpeg_bytes()) for i in range(3)]
    return services.batch_create(project=project, files=files, check_queue=False)


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
