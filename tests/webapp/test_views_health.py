from __future__ import annotations

import pytest
from django.urls import reverse

pytestmark = pytest.mark.django_db(transaction=True)


def test_it_reports_ok_when_database_broker_and_worker_are_up(client, start_worker):
    start_worker(queues="default")
    response = client.get(reverse("healthz"))
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["down"] == []
    assert body["database"]["ok"] and body["broker"]["ok"] and body["workers"]["ok"]
    assert body["workers"]["workers"]


def test_it_names_the_workers_as_down_when_none_answers(client, broker):
    response = client.get(reverse("healthz"))
    assert response.status_code == 503
    body = response.json()
    assert body["down"] == ["workers"]
    assert "no worker" in body["workers"]["error"]


def test_it_names_the_broker_as_down_when_redis_is_unreachable(client, tmp_path, monkeypatch):
    from worker import app

    # Only the write URL: the health check connects with it, and restoring it afterwards
    # cannot leave a dead URL behind for later tests.
    monkeypatch.setattr(app.conf, "broker_write_url", f"redis+socket://{tmp_path}/nothing.sock")
    response = client.get(reverse("healthz"))
    assert response.status_code == 503
    body = response.json()
    assert "broker" in body["down"]
    assert body["broker"]["error"] == "broker unreachable"
    assert str(tmp_path) not in response.content.decode()


def test_it_says_the_database_is_down_without_its_details_but_logs_them(
    client, broker, monkeypatch, caplog
):
    # /healthz needs no login: driver errors name the host, port, user or file.
    from django.db import connection

    unopenable = "/nonexistent-graft-dir/db-host.internal.sqlite3"
    if connection.vendor != "sqlite":
        unopenable = "graft_no_such_database_on_db_host"
    connection.close()
    monkeypatch.setitem(connection.settings_dict, "NAME", unopenable)
    response = client.get(reverse("healthz"))
    connection.close()
    assert response.status_code == 503
    body = response.json()
    assert "database" in body["down"]
    assert body["database"]["error"] == "database unreachable"
    assert unopenable not in response.content.decode()
    assert "healthz: database unreachable: " in caplog.text  # the driver's words, logged


def test_it_needs_no_login_and_only_answers_get(client):
    assert client.post(reverse("healthz")).status_code == 405


def test_it_answers_probes_whatever_host_they_send(client, broker):
    # Load balancers and kubernetes probe the pod's IP, which is no name in ALLOWED_HOSTS.
    response = client.get(reverse("healthz"), HTTP_HOST="10.1.2.3:8000")
    assert response.status_code == 503
    assert response.json()["down"] == ["workers"]
    assert client.post(reverse("healthz"), HTTP_HOST="10.1.2.3:8000").status_code == 405


def test_it_still_refuses_other_pages_for_a_host_not_allowed(client):
    assert client.get(reverse("login"), HTTP_HOST="10.1.2.3:8000").status_code == 400
    assert client.get(reverse("healthz") + "/", HTTP_HOST="10.1.2.3:8000").status_code == 400
