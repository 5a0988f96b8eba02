"""Checks behind ``GET /healthz``: database, broker and workers, each with a short timeout.

``/healthz`` needs no login, so the report names only what is down, in generic words;
the detail (host names, ports, user names in driver errors) goes to the log.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.db import connection

logger = logging.getLogger(__name__)


def check_database() -> dict[str, Any]:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:
        logger.warning("healthz: database unreachable: %s", exc)
        return {"ok": False, "error": "database unreachable"}
    return {"ok": True, "vendor": connection.vendor}


def check_broker(timeout: float = 2.0) -> dict[str, Any]:
    from worker import app

    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
    except Exception as exc:
        logger.warning("healthz: broker unreachable at %s: %s", _safe_url(), exc)
        return {"ok": False, "error": "broker unreachable"}
    return {"ok": True}


def check_workers(timeout: float = 1.0) -> dict[str, Any]:
    from worker import app

    try:
        replies = app.control.ping(timeout=timeout) or []
    except Exception as exc:
        logger.warning("healthz: could not ask the workers: %s", exc)
        return {"ok": False, "workers": [], "error": "could not ask the workers"}
    names = sorted(name for reply in replies for name in reply)
    if not names:
        return {"ok": False, "workers": [], "error": "no worker answered a ping"}
    return {"ok": True, "workers": names}


def health() -> tuple[bool, dict[str, Any]]:
    """Return (all ok, report). Workers are only asked when the broker is up."""
    report: dict[str, Any] = {"database": check_database(), "broker": check_broker()}
    if report["broker"]["ok"]:
        report["workers"] = check_workers()
    else:
        report["workers"] = {"ok": False, "workers": [], "error": "broker is down"}
    ok = all(part["ok"] for part in report.values())
    report["status"] = "ok" if ok else "down"
    report["down"] = [name for name in ("database", "broker", "workers") if not report[name]["ok"]]
    return ok, report


def _safe_url() -> str:
    """The broker URL without its password."""
    from kombu.utils.url import maybe_sanitize_url

    return maybe_sanitize_url(settings.CELERY_BROKER_URL)
