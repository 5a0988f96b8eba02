"""Middleware of Graft's own (see MIDDLEWARE in settings)."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from webapp.views.health import healthz


def health_check_middleware(
    get_response: Callable[[HttpRequest], HttpResponse],
) -> Callable[[HttpRequest], HttpResponse]:
    """Answer ``/healthz`` before any middleware checks the Host header: load balancers and
    kubernetes probe the pod's IP, which is no name in ALLOWED_HOSTS. Only this exact path
    is answered here; every other URL goes through the usual host check."""

    def middleware(request: HttpRequest) -> HttpResponse:
        if request.path_info == "/healthz":
            return healthz(request)
        return get_response(request)

    return middleware


# Multipart framing around the largest file (field names, boundaries, a few small fields).
REQUEST_SLACK_BYTES = 16 * 2**20


def max_request_bytes() -> int:
    """The largest request body Graft reads: its largest upload, a zip, plus framing."""
    return settings.GRAFT_MAX_ZIP_MB * 2**20 + REQUEST_SLACK_BYTES


def request_size_middleware(
    get_response: Callable[[HttpRequest], HttpResponse],
) -> Callable[[HttpRequest], HttpResponse]:
    """Refuse (413) a request whose declared body is larger than any upload Graft takes,
    before anything reads it.

    Django spools uploaded files to disk as it parses a body, and the CSRF check parses a
    POST before the login check sees it: without this, anyone who could reach the server
    could make it write a body of any size to its temporary folder before being refused.
    Placed after the authentication middleware so the refusal page has its usual layout,
    and before any middleware or view reads the body. A body sent without a length
    (chunked) is not read by Django at all.
    """

    def middleware(request: HttpRequest) -> HttpResponse:
        try:
            declared = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            declared = 0
        if declared <= max_request_bytes():
            return get_response(request)
        message = (
            f"The upload is {declared / 2**20:,.0f} MB; the largest Graft accepts is a "
            f"{settings.GRAFT_MAX_ZIP_MB:,} MB zip (GRAFT_MAX_ZIP_MB). Send photos in "
            "smaller groups, or as a zip within that size."
        )
        if request.path_info.startswith("/api/"):
            return JsonResponse({"detail": message, "code": "too_large"}, status=413)
        return render(request, "413.html", {"message": message}, status=413)

    return middleware
