"""The page shown instead of a login that django-axes refused (too many failures)."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


def login_locked_out(
    request: HttpRequest,
    original_response: HttpResponse | None = None,
    credentials: dict | None = None,
) -> HttpResponse:
    """django-axes' AXES_LOCKOUT_CALLABLE: the lockout in the app's layout, status 429.

    Every attempt during the lockout restarts the cool-off, so "try again in N minutes"
    holds from this very response.
    """
    return render(
        request,
        "registration/locked_out.html",
        {"cooloff_minutes": settings.GRAFT_LOGIN_COOLOFF_MINUTES},
        status=429,
    )
