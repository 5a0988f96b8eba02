"""Middleware of Graft's own (see MIDDLEWARE in settings)."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

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
