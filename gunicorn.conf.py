"""gunicorn settings for Graft's web process: ``gunicorn -c gunicorn.conf.py webapp.wsgi``.

Tuned for a small machine (2 cores): one worker process per core, each with a few
threads so slow uploads and downloads do not block classification. ``preload_app`` stays
off so every worker imports Django after the fork and loads its own LiteRT predictor
(an interpreter must never be shared across a fork). Each worker classifies with
``GRAFT_SERVING_THREADS`` LiteRT threads (default 1), so workers x threads = cores.

Environment: ``GRAFT_BIND`` (default ``GRAFT_HOST:GRAFT_PORT``, i.e. 127.0.0.1:8000),
``GUNICORN_WORKERS`` (default: CPU count), ``GUNICORN_THREADS`` (default 4),
``GUNICORN_TIMEOUT`` (default 120 s, for large batch uploads), ``GUNICORN_MAX_REQUESTS``
(default 20000, then the worker is recycled), ``GUNICORN_ACCESS_LOG`` (default: none),
``LOG_LEVEL`` (default info).
"""

from __future__ import annotations

import os


def _int(name: str, default: int) -> int:
    """An integer from the environment; gunicorn prints this message if it is malformed."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return int(raw.strip())
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None


_host = os.environ.get("GRAFT_HOST", "127.0.0.1").strip().strip("[]")
_host = f"[{_host}]" if ":" in _host else _host  # gunicorn reads :::8000 as no port
_port = os.environ.get("GRAFT_PORT", "8000")

bind = os.environ.get("GRAFT_BIND", f"{_host}:{_port}").split(",")
workers = _int("GUNICORN_WORKERS", os.cpu_count() or 2)
worker_class = "gthread"
threads = _int("GUNICORN_THREADS", 4)
preload_app = False
timeout = _int("GUNICORN_TIMEOUT", 120)
graceful_timeout = 30
keepalive = 5
# Recycle workers now and then, so a slow leak in any library cannot grow without bound.
max_requests = _int("GUNICORN_MAX_REQUESTS", 20000)
max_requests_jitter = max_requests // 10
accesslog = os.environ.get("GUNICORN_ACCESS_LOG") or None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
wsgi_app = "webapp.wsgi:application"
