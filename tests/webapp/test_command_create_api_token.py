"""manage.py create_api_token USERNAME."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command
from rest_framework.authtoken.models import Token


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("create_api_token", *args, stdout=out)
    return out.getvalue().strip()


def test_it_prints_a_token_that_authenticates(viewer, client):
    key = run("victor")

    response = client.get("/api/v1/projects", HTTP_AUTHORIZATION=f"Token {key}")

    assert response.status_code == 200
    assert Token.objects.get(user=viewer).key == key


def test_it_prints_the_same_token_again_unless_rotated(viewer):
    first = run("victor")

    assert run("victor") == first
    assert run("victor", "--rotate") != first


def test_it_refuses_an_unknown_user(db):
    with pytest.raises(CommandError, match="No user named"):
        run("nobody")
