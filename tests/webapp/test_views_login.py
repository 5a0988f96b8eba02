"""Failed logins: after GRAFT_LOGIN_FAILURE_LIMIT of them a (username, address) pair is
locked out for GRAFT_LOGIN_COOLOFF_MINUTES, on /login/ and the admin's login alike."""

from __future__ import annotations

from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from tests.webapp.conftest import token_client

LIMIT = 5  # GRAFT_LOGIN_FAILURE_LIMIT's default


def log_in(
    client: Client,
    user: User,
    password: str | None = None,
    *,
    url: str = "/login/",
    headers: dict[str, str] | None = None,
):
    """POST the login form; ``password=None`` sends the right one (``pw-<username>``)."""
    form = {"username": user.username, "password": password or f"pw-{user.username}"}
    return client.post(url, form, headers=headers)


def fail(client: Client, user: User, times: int, *, url: str = "/login/") -> list[int]:
    return [log_in(client, user, "wrong", url=url).status_code for _ in range(times)]


def assert_locked_out(response) -> None:
    assert response.status_code == 429
    assert "registration/locked_out.html" in [t.name for t in response.templates]
    assert "base.html" in [t.name for t in response.templates]
    assert b"Try again in 15 minutes" in response.content


@pytest.fixture
def stranger() -> Client:
    """A browser at one address (every request it sends comes from 203.0.113.7)."""
    return Client(REMOTE_ADDR="203.0.113.7")


def test_it_refuses_even_the_right_password_after_too_many_failures(stranger, viewer):
    assert fail(stranger, viewer, LIMIT - 1) == [200] * (LIMIT - 1)
    assert_locked_out(log_in(stranger, viewer, "wrong"))
    response = log_in(stranger, viewer)
    assert_locked_out(response)
    assert "_auth_user_id" not in stranger.session


def test_it_still_lets_another_user_log_in_from_the_same_address(stranger, viewer, outsider):
    fail(stranger, viewer, LIMIT)
    response = log_in(stranger, outsider)
    assert response.status_code == 302
    assert response["Location"] == reverse("dashboard")


def test_it_still_lets_the_user_log_in_from_another_address(stranger, viewer):
    fail(stranger, viewer, LIMIT)
    elsewhere = Client(REMOTE_ADDR="198.51.100.9")
    assert log_in(elsewhere, viewer).status_code == 302


def test_it_ignores_a_forwarded_for_header_the_client_made_up(stranger, viewer):
    fail(stranger, viewer, LIMIT)
    forged = log_in(stranger, viewer, headers={"X-Forwarded-For": "192.0.2.1"})
    assert_locked_out(forged)


def test_it_starts_counting_again_after_a_successful_login(stranger, viewer):
    fail(stranger, viewer, LIMIT - 1)
    assert log_in(stranger, viewer).status_code == 302
    stranger.logout()
    assert fail(stranger, viewer, LIMIT - 1) == [200] * (LIMIT - 1)
    assert log_in(stranger, viewer).status_code == 302


def test_it_lets_the_user_in_again_after_the_cool_off(stranger, viewer):
    fail(stranger, viewer, LIMIT)
    AccessAttempt.objects.update(attempt_time=timezone.now() - timedelta(minutes=16))
    assert log_in(stranger, viewer).status_code == 302


def test_it_honours_the_configured_limit(stranger, viewer, settings):
    settings.AXES_FAILURE_LIMIT = 2
    assert fail(stranger, viewer, 2) == [200, 429]


def test_it_locks_out_the_admin_login_too(stranger, admin_user):
    url = reverse("admin:login")
    assert fail(stranger, admin_user, LIMIT - 1, url=url) == [200] * (LIMIT - 1)
    assert_locked_out(log_in(stranger, admin_user, "wrong", url=url))
    assert_locked_out(log_in(stranger, admin_user, url=url))
    assert "_auth_user_id" not in stranger.session


def test_it_leaves_api_tokens_working_for_a_locked_out_user(stranger, viewer):
    fail(stranger, viewer, LIMIT)
    api = token_client(viewer)
    assert api.get(reverse("api:project_list"), REMOTE_ADDR="203.0.113.7").status_code == 200
