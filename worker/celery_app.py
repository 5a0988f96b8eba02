"""The Celery application, configured from Django's settings (``CELERY_*``)."""

from __future__ import annotations

import os

import django
from celery import Celery
from celery.signals import worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
django.setup()

app = Celery("graft")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["worker"], related_name="tasks", force=True)


@worker_ready.connect
def reconcile_on_start(sender: object = None, **kwargs: object) -> None:
    """A worker that starts after a crash or a broker flush picks up what was lost."""
    app.send_task("worker.tasks.reconcile_jobs", queue="default")
