"""WSGI entry point (``gunicorn webapp.wsgi``)."""

from __future__ import annotations

import os
import sys

from django.conf import settings
from django.core.wsgi import get_wsgi_application

from classifier import allocator

POSTGRES_DRIVERS = ("psycopg", "psycopg2")


def leave_out_unused_postgres_driver() -> bool:
    """On SQLite, keep the PostgreSQL driver out of the web process; True if it was left out.

    Django REST framework imports ``django.contrib.postgres``, and with it psycopg and libpq,
    whenever psycopg is installed, only to offer PostgreSQL serializer fields that Graft does
    not use: ~10 MB resident in every web worker (measured: 87 -> 77 MB after loading the
    URLconf). A process whose databases are all SQLite never needs the driver, so it is
    marked absent before Django loads and DRF takes its own "not installed" branch. With
    PostgreSQL configured, or once something has imported the driver, nothing changes.
    """
    engines = {database["ENGINE"] for database in settings.DATABASES.values()}
    if engines != {"django.db.backends.sqlite3"}:
        return False
    if any(name in sys.modules for name in POSTGRES_DRIVERS):
        return False
    for name in POSTGRES_DRIVERS:
        sys.modules[name] = None  # type: ignore[assignment]  # "import psycopg" -> ImportError
    return True


os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
# Before gunicorn starts this worker's threads; see classifier.allocator.
allocator.tune()
leave_out_unused_postgres_driver()
application = get_wsgi_application()
