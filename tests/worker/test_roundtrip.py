"""A real Celery round trip: the embedded Redis and a real worker process, no eager mode."""

from __future__ import annotations

import os

import pytest

from worker.tasks import ping

pytestmark = pytest.mark.django_db(transaction=True)


def test_it_runs_a_task_in_a_separate_worker_process(start_worker):
    start_worker(queues="default")
    result = ping.delay().get(timeout=30)
    assert result["pong"] is True
    assert result["pid"] != os.getpid()
