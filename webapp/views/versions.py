"""Model versions: the version page, downloads, and the confirmed, audited actions
(activate, roll back, delete)."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.core.exceptions import ValidationError
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods

from webapp import selectors, services
from webapp.models import ModelVersion, Project


def _version(slug: str, number: int) -> ModelVersion:
    return get_object_or_404(
        ModelVersion.objects.select_related("project", "dataset", "job"),
        project__slug=slug,
        number=number,
    )


@require_GET
def version_detail(request: HttpRequest, slug: str, number: int) -> HttpResponse:
    version = _version(slug, number)
    return render(
        request,
        "versions/detail.html",
        {
            "project": version.project,
            "version": version,
            "history": selectors.job_history(job=version.job),
            "rollback_to": selectors.rollback_target(project=version.project),
            "events": selectors.activation_log(project=version.project),
        },
    )


@require_GET
def version_download(request: HttpRequest, slug: str, number: int, filename: str) -> FileResponse:
    version = _version(slug, number)
    if filename not in ModelVersion.DOWNLOADS or not (version.path / filename).is_file():
        raise Http404("No such file in this version.")
    return FileResponse(
        open(version.path / filename, "rb"),  # noqa: SIM115 - FileResponse closes it
        as_attachment=True,
        filename=f"{version.project.slug}-v{version.number}-{filename}",
    )


def _confirm(request: HttpRequest, **context) -> HttpResponse:
    return render(request, "versions/confirm.html", context)


@require_http_methods(["GET", "POST"])
@permission_required("webapp.manage_versions", raise_exception=True)
def version_activate(request: HttpRequest, slug: str, number: int) -> HttpResponse:
    version = _version(slug, number)
    if request.method == "GET":
        return _confirm(
            request,
            project=version.project,
            version=version,
            action="activate",
            current=version.project.active_version,
        )
    try:
        services.model_version_activate(version=version, user=request.user)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, f"{version.label} is now active.")
    return redirect(version)


@require_http_methods(["GET", "POST"])
@permission_required("webapp.manage_versions", raise_exception=True)
def version_delete(request: HttpRequest, slug: str, number: int) -> HttpResponse:
    version = _version(slug, number)
    if request.method == "GET":
        return _confirm(request, project=version.project, version=version, action="delete")
    try:
        services.model_version_delete(version=version, user=request.user)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
        return redirect(version)
    messages.success(request, f"{version.label} and its files were deleted.")
    return redirect(version.project)


@require_http_methods(["GET", "POST"])
@permission_required("webapp.manage_versions", raise_exception=True)
def project_rollback(request: HttpRequest, slug: str) -> HttpResponse:
    """Re-activate the version that was active before the current one."""
    project = get_object_or_404(Project, slug=slug)
    if request.method == "GET":
        return _confirm(
            request,
            project=project,
            action="rollback",
            current=project.active_version,
            rollback_to=selectors.rollback_target(project=project),
            events=selectors.activation_log(project=project, limit=5),
        )
    try:
        version = services.model_version_rollback(project=project, user=request.user)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
        return redirect(project)
    messages.success(request, f"Rolled back: {version.label} is active again.")
    return redirect(version)
