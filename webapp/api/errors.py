"""Every API error is JSON ``{"detail": str, "code": str}`` with the status that fits.

DRF already answers its own exceptions (401, 403, 404, 405, 429, parse errors); this
handler adds Graft's domain errors so views can simply call services and let them raise.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import RequestDataTooBig, TooManyFilesSent
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import HttpRequest, JsonResponse
from rest_framework import status
from rest_framework.exceptions import ValidationError as DRFValidationError
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from classifier.errors import ArtifactError, InvalidImageError
from webapp import services

# (exception class, HTTP status, code); the first match wins.
DOMAIN_ERRORS: list[tuple[type[BaseException], int, str]] = [
    (services.NoActiveVersion, status.HTTP_409_CONFLICT, "no_active_version"),
    (services.WrongStatus, status.HTTP_409_CONFLICT, "wrong_status"),
    (services.UploadTooLarge, status.HTTP_413_REQUEST_ENTITY_TOO_LARGE, "too_large"),
    (RequestDataTooBig, status.HTTP_413_REQUEST_ENTITY_TOO_LARGE, "too_large"),
    (TooManyFilesSent, status.HTTP_400_BAD_REQUEST, "too_many_files"),
    (InvalidImageError, status.HTTP_400_BAD_REQUEST, "invalid_image"),
    (services.QueueUnavailable, status.HTTP_503_SERVICE_UNAVAILABLE, "queue_unavailable"),
    (ArtifactError, status.HTTP_503_SERVICE_UNAVAILABLE, "version_unavailable"),
]


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's ``EXCEPTION_HANDLER``: domain errors to JSON; anything else unchanged."""
    for kind, code_status, code in DOMAIN_ERRORS:
        if isinstance(exc, kind):
            return error_response(_message(exc), code, code_status)
    if isinstance(exc, DjangoValidationError):
        return error_response(
            " ".join(exc.messages), "invalid", status.HTTP_400_BAD_REQUEST, errors=_fields(exc)
        )
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, DRFValidationError):
        response.data = {"detail": "Invalid input.", "code": "invalid", "errors": exc.detail}
    elif isinstance(response.data, dict) and "detail" in response.data:
        detail = response.data["detail"]
        response.data = {"detail": str(detail), "code": getattr(detail, "code", "error")}
    return response


def error_response(detail: str, code: str, http_status: int, **extra: Any) -> Response:
    return Response({"detail": detail, "code": code, **extra}, status=http_status)


def not_found(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
    """JSON 404 for any unknown path under /api/v1/ (Django's default page is HTML)."""
    return JsonResponse({"detail": "Not found.", "code": "not_found"}, status=404)


def _message(exc: BaseException) -> str:
    if isinstance(exc, RequestDataTooBig | TooManyFilesSent):
        return "The request is too large." if isinstance(exc, RequestDataTooBig) else str(exc)
    return str(exc) or exc.__class__.__doc__ or "Error."


def _fields(exc: DjangoValidationError) -> dict[str, list[str]] | None:
    return exc.message_dict if hasattr(exc, "error_dict") else None
