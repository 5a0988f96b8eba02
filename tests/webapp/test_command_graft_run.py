from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError


@pytest.mark.django_db
def test_it_creates_the_first_admin_once_and_prints_how_to_log_in(monkeypatch):
    monkeypatch.delenv("GRAFT_ADMIN_PASSWORD", raising=False)
    out = StringIO()
    call_command("graft_run", "--no-start", stdout=out)
    admin = User.objects.get()
    assert admin.is_superuser and admin.username == "admin"
    assert "Log in as 'admin' with password" in out.getvalue()
    assert "http://localhost:8000/" in out.getvalue()

    again = StringIO()
    call_command("graft_run", "--no-start", stdout=again)
    assert User.objects.count() == 1
    assert "password" not in again.getvalue().split("existing account")[0].lower()


@pytest.mark.django_db
def test_it_takes_the_admin_credentials_from_the_environment(monkeypatch):
    monkeypatch.setenv("GRAFT_ADMIN_USERNAME", "root")
    monkeypatch.setenv("GRAFT_ADMIN_PASSWORD", "s3cret-enough")
    out = StringIO()
    call_command("graft_run", "--no-start", stdout=out)
    assert User.objects.get(username="root").check_password("s3cret-enough")
    assert "s3cret-enough" not in out.getvalue()


@pytest.mark.django_db
def test_it_names_a_data_dir_it_cannot_write_before_starting_anything(settings, tmp_path):
    (tmp_path / "a-file").write_text("not a directory")
    settings.GRAFT_DATA_DIR = tmp_path / "a-file" / "data"
    with pytest.raises(CommandError, match="GRAFT_DATA_DIR"):
        call_command("graft_run", "--no-start", stdout=StringIO())


def test_the_worker_waits_for_the_embedded_redis_before_it_connects(tmp_path, broker, settings):
    from pathlib import Path

    from webapp import embedded_redis

    procfile = (Path(settings.BASE_DIR) / "Procfile").read_text()
    worker = next(line for line in procfile.splitlines() if line.startswith("worker:"))
    assert 'embedded_redis wait "$GRAFT_WAIT_FOR_REDIS" && exec' in worker

    assert embedded_redis.main(["wait", ""]) == 0  # a Redis of your own: nothing to wait for
    assert embedded_redis.main(["wait", str(tmp_path / "nobody.sock"), "0.2"]) == 1
    if settings.USES_EMBEDDED_REDIS:
        assert embedded_redis.main(["wait", str(settings.EMBEDDED_REDIS_SOCKET), "5"]) == 0
