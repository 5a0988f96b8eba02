"""Batches: a project's batch classifications, and one batch's live progress and results.

Batches are started from the classify page (``classify.batch_create``); like the classify
page, these pages are open to everyone who is logged in.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET

from webapp import selectors
from webapp.models import BatchClassification, Project


def _batch(pk: int) -> BatchClassification:
    return get_object_or_404(
        BatchClassification.objects.select_related("project", "version", "created_by"), pk=pk
    )


def _live_context(batch: BatchClassification) -> dict:
    return {
        "batch": batch,
        "labels": selectors.batch_label_counts(batch=batch),
        "results": selectors.batch_results(batch=batch),
    }


@require_GET
def project_batch_list(request: HttpRequest, slug: str) -> HttpResponse:
    project = get_object_or_404(Project, slug=slug)
    return render(
        request,
        "batches/list.html",
        {
            "project": project,
            "batches": selectors.batch_list(project=project, limit=200),
            "can_classify": project.active_version is not None,
        },
    )


@require_GET
def batch_detail(request: HttpRequest, pk: int) -> HttpResponse:
    batch = _batch(pk)
    return render(
        request, "batches/detail.html", {"project": batch.project, **_live_context(batch)}
    )


@require_GET
def batch_live(request: HttpRequest, pk: int) -> HttpResponse:
    """The live part of the batch page (status, progress, answers so far); htmx polls it."""
    return render(request, "batches/_live.html", _live_context(_batch(pk)))
