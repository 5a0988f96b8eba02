"""Projects: list, create, and the project page (datasets, jobs, versions, audit log)."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods

from webapp import selectors, services
from webapp.forms import ProjectForm
from webapp.models import Project
from webapp.views.pages import page_of

PROJECT_PAGE_JOBS = 20
PROJECT_PAGE_EVENTS = 10


@require_GET
def project_list(request: HttpRequest) -> HttpResponse:
    return render(request, "projects/list.html", {"projects": selectors.project_list()})


@require_http_methods(["GET", "POST"])
@permission_required("webapp.train_models", raise_exception=True)
def project_create(request: HttpRequest) -> HttpResponse:
    form = ProjectForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            project = services.project_create(user=request.user, **form.cleaned_data)
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.success(request, f"Project “{project.name}” created.")
            return redirect(project)
    return render(request, "projects/create.html", {"form": form})


@require_GET
def project_detail(request: HttpRequest, slug: str) -> HttpResponse:
    project = get_object_or_404(Project, slug=slug)
    return render(
        request,
        "projects/detail.html",
        {
            "project": project,
            "active_version": project.active_version,
            "rollback_to": selectors.rollback_target(project=project),
            "datasets": selectors.dataset_list(project=project),
            "jobs": selectors.job_list(project=project, limit=PROJECT_PAGE_JOBS),
            "job_count": project.jobs.count(),
            "versions": selectors.version_list(project=project),
            "events": selectors.activation_log(project=project, limit=PROJECT_PAGE_EVENTS),
            "event_count": project.activations.count(),
            "batches": selectors.batch_list(project=project, limit=10),
        },
    )


@require_GET
def project_activations(request: HttpRequest, slug: str) -> HttpResponse:
    """The project's whole activation log (the project page shows the latest)."""
    project = get_object_or_404(Project, slug=slug)
    page = page_of(request, selectors.activation_log(project=project, limit=None))
    return render(
        request, "projects/activations.html", {"project": project, "events": page, "page": page}
    )
