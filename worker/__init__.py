"""Graft's Celery worker: ``celery -A worker worker``.

The tasks are thin: claim the job row, call ``classifier``, persist through
``webapp.services``. TensorFlow is imported inside task bodies only, never in the parent
process before it forks its children.
"""

from __future__ import annotations

from worker.celery_app import app

__all__ = ["app"]
