"""Overview pages: the dashboard and the cross-project lists."""

from __future__ import annotations

from django.core.paginator import Page, Paginator
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET

from webapp import selectors
from webapp.models import Project

PAGE_SIZE = 50


def page_of(request: HttpRequest, rows: QuerySet) -> Page:
    """The ``?page=`` of ``rows``, PAGE_SIZE at a time; a missing or odd number gives the
    first page, one past the end the last, so an old link still lands somewhere."""
    return Paginator(rows, PAGE_SIZE).get_page(request.GET.get("page"))


@require_GET
def dashboard(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "dashboard.html",
        {
            "counts": selectors.dashboard_counts(),
            "projects": selectors.project_list(),
            "active_versions": selectors.active_versions(),
            "recent_jobs": selectors.job_list(limit=8),
        },
    )


@require_GET
def dataset_list(request: HttpRequest) -> HttpResponse:
    page = page_of(request, selectors.dataset_list())
    return render(request, "datasets/list.html", {"datasets": page, "page": page})


@require_GET
def job_list(request: HttpRequest) -> HttpResponse:
    """Every job, newest first; ``?project=<slug>`` keeps one project's."""
    slug = request.GET.get("project")
    project = get_object_or_404(Project, slug=slug) if slug else None
    page = page_of(request, selectors.job_list(project=project))
    return render(request, "jobs/list.html", {"jobs": page, "page": page, "project": project})


@require_GET
def batch_list(request: HttpRequest) -> HttpResponse:
    page = page_of(request, selectors.batch_list())
    can_classify = selectors.classify_projects().exists()
    return render(
        request,
        "batches/list.html",
        {"batches": page, "page": page, "can_classify": can_classify},
    )


@require_GET
def version_list(request: HttpRequest) -> HttpResponse:
    page = page_of(request, selectors.version_list())
    return render(request, "versions/list.html", {"versions": page, "page": page})
