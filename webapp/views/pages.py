"""Overview pages: the dashboard and the cross-project lists."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from webapp import selectors


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
    return render(request, "datasets/list.html", {"datasets": selectors.dataset_list()})


@require_GET
def job_list(request: HttpRequest) -> HttpResponse:
    return render(request, "jobs/list.html", {"jobs": selectors.job_list(limit=200)})


@require_GET
def batch_list(request: HttpRequest) -> HttpResponse:
    return render(request, "batches/list.html", {"batches": selectors.batch_list(limit=200)})


@require_GET
def version_list(request: HttpRequest) -> HttpResponse:
    return render(request, "versions/list.html", {"versions": selectors.version_list()})
