"""Batches: a project's batch classifications, one batch's live progress and results, and
cancelling or deleting one.

Batches are started from the classify page (``classify.batch_create``); like the classify
page, these pages are open to everyone who is logged in. Cancelling and deleting are for
whoever started the batch and for those who may train models (403 for anyone else).
"""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from webapp import selectors, services
from webapp.models import BatchClassification, Project
from webapp.views.pages import page_of


def _batch(pk: int) -> BatchClassification:
    return get_object_or_404(
        BatchClassification.objects.select_related(
            "project", "version", "created_by", "cancelled_by"
        ),
        pk=pk,
    )


def _live_context(request: HttpRequest, batch: BatchClassification) -> dict:
    may_change = batch.may_be_changed_by(request.user)
    return {
        "batch": batch,
        "labels": selectors.batch_label_counts(batch=batch),
        "results": selectors.batch_results(batch=batch),
        "may_cancel": may_change and batch.can_cancel,
        "may_delete": may_change and batch.can_delete,
    }


@require_GET
def project_batch_list(request: HttpRequest, slug: str) -> HttpResponse:
    project = get_object_or_404(Project, slug=slug)
    page = page_of(request, selectors.batch_list(project=project))
    return render(
        request,
        "batches/list.html",
        {
            "project": project,
            "batches": page,
            "page": page,
            "can_classify": project.active_version is not None,
        },
    )


@require_GET
def batch_detail(request: HttpRequest, pk: int) -> HttpResponse:
    batch = _batch(pk)
    return render(
        request,
        "batches/detail.html",
        {"project": batch.project, **_live_context(request, batch)},
    )


@require_GET
def batch_live(request: HttpRequest, pk: int) -> HttpResponse:
    """The live part of the batch page (status, progress, answers so far); htmx polls it."""
    return render(request, "batches/_live.html", _live_context(request, _batch(pk)))


@require_POST
def batch_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    batch = _batch(pk)
    try:
        batch = services.batch_cancel(batch=batch, user=request.user)
    except services.WrongStatus as exc:
        messages.error(request, str(exc))
    else:
        if batch.status == BatchClassification.Status.CANCELLED:
            messages.success(request, f"Batch #{batch.pk} cancelled.")
        else:
            messages.success(
                request,
                f"Batch #{batch.pk} will stop after the photos it is classifying now; "
                "the results so far stay downloadable.",
            )
    return redirect(batch)


@require_POST
def batch_delete(request: HttpRequest, pk: int) -> HttpResponse:
    batch = _batch(pk)
    try:
        services.batch_delete(batch=batch, user=request.user)
    except services.WrongStatus as exc:
        messages.error(request, str(exc))
        return redirect(batch)
    messages.success(
        request,
        f"Batch #{batch.pk} and its files were deleted; its answers stay in the prediction log.",
    )
    return redirect("project_batch_list", batch.project.slug)
