"""Celery tasks. Arguments are ids; rows are the source of truth."""

from __future__ import annotations

import os
import socket

from celery import shared_task


@shared_task(name="worker.tasks.ping")
def ping() -> dict:
    """A round-trip check: answers which worker process ran it."""
    return {"pong": True, "hostname": socket.gethostname(), "pid": os.getpid()}
