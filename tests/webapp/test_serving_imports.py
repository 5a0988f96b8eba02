"""Classifying through the whole web stack (URL -> DRF view -> service -> predictor ->
LiteRT) must not import TensorFlow or Keras: checked in a fresh interpreter."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from classifier import allocator

ROOT = Path(__file__).resolve().parents[2]

CLASSIFY = """
import io, json, os, sys
os.environ["DJANGO_SETTINGS_MODULE"] = "webapp.settings"
import django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from django.contrib.auth.models import User
from PIL import Image
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient
from webapp.models import ModelVersion, Project
from webapp.services import model_version_activate

project = Project.objects.create(name="Flowers", slug="flowers")
version = ModelVersion.objects.create(project=project, number=1, directory=sys.argv[1])
model_version_activate(version=version)
client = APIClient()
token = Token.objects.create(user=User.objects.create_user("u", password="p"))
client.credentials(HTTP_AUTHORIZATION="Token " + token.key)
buffer = io.BytesIO()
Image.new("RGB", (320, 240), (10, 120, 200)).save(buffer, "JPEG")
buffer.name = "p.jpg"
buffer.seek(0)
response = client.post("/api/v1/projects/flowers/classify", {"image": buffer})
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras"))
print(json.dumps({"status": response.status_code, "body": response.json(), "heavy": heavy}))
"""


def test_it_classifies_through_the_web_stack_without_importing_tensorflow(
    tmp_path, tiny_version_dirs
):
    env = {
        **{k: v for k, v in os.environ.items() if k not in allocator.USER_SETTINGS},
        "GRAFT_VAR_DIR": str(tmp_path / "var"),
        "GRAFT_DATA_DIR": str(tmp_path / "data"),
        # Its own database: never the one DATABASE_URL names (CI reruns with PostgreSQL).
        "DATABASE_URL": f"sqlite:///{tmp_path / 'var' / 'graft.sqlite3'}",
        "SECRET_KEY": "test",
        "ALLOWED_HOSTS": "testserver",
    }
    (tmp_path / "var").mkdir()

    out = subprocess.run(
        [sys.executable, "-c", CLASSIFY, str(tiny_version_dirs[1])],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )

    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["status"] == 200, result["body"]
    assert result["body"]["version"] == 1
    assert result["heavy"] == []


WSGI = """
import json, os, sys
os.environ["DJANGO_SETTINGS_MODULE"] = "webapp.settings"
from webapp.wsgi import application
from classifier import allocator
from django.conf import settings
import rest_framework.compat
import webapp.urls
print(json.dumps({
    "engine": settings.DATABASES["default"]["ENGINE"],
    "psycopg_loaded": sys.modules.get("psycopg") is not None,
    "contrib_postgres": "django.contrib.postgres.fields" in sys.modules,
    "malloc_tuned": allocator.tune(),
}))
"""


def _wsgi_process(tmp_path, database_url: str) -> dict:
    env = {
        **{k: v for k, v in os.environ.items() if k not in allocator.USER_SETTINGS},
        "GRAFT_VAR_DIR": str(tmp_path / "var"),
        "GRAFT_DATA_DIR": str(tmp_path / "data"),
        "DATABASE_URL": database_url,
        "SECRET_KEY": "test",
    }
    (tmp_path / "var").mkdir(exist_ok=True)
    out = subprocess.run(
        [sys.executable, "-c", WSGI], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_web_process_on_sqlite_does_not_load_the_postgres_driver(tmp_path):
    result = _wsgi_process(tmp_path, f"sqlite:///{tmp_path / 'var' / 'graft.sqlite3'}")

    assert result["engine"] == "django.db.backends.sqlite3"
    assert result["psycopg_loaded"] is False
    assert result["contrib_postgres"] is False
    # The allocator keeps per-photo arrays for reuse (classifier.allocator), on glibc.
    assert result["malloc_tuned"] is (platform.libc_ver()[0] == "glibc")


def test_the_web_process_on_postgres_keeps_the_driver(tmp_path):
    pytest.importorskip("psycopg", reason="psycopg is not installed")
    # Nothing connects at import time: the URL only selects the engine.
    result = _wsgi_process(tmp_path, "postgres://nobody@127.0.0.1:1/none")

    assert result["engine"] == "django.db.backends.postgresql"
    assert result["psycopg_loaded"] is True
