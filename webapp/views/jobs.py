"""Training: the start form, the live job page and cancelling."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.core.exceptions import ObjectDoesNotExist, ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from webapp import selectors, services
from webapp.forms import TrainForm, add_service_errors
from webapp.models import Project, TrainingJob


@require_http_methods(["GET", "POST"])
@permission_required("webapp.train_models", raise_exception=True)
def job_create(request: HttpRequest, slug: str) -> HttpResponse:
    """The start-training form: the recipe's defaults, the advanced knobs folded away."""
    project = get_object_or_404(Project, slug=slug)
    initial = {"dataset": request.GET.get("dataset")} if request.GET.get("dataset") else None
    form = TrainForm(request.POST or None, project=project, initial=initial)
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            try:
                job = services.training_job_create(
                    project=project,
                    dataset=form.cleaned_data["dataset"],
                    config=form.config(),
                    user=request.user,
                    activate_on_success=form.cleaned_data["activate_on_success"],
                )
            except ValidationError as exc:
                add_service_errors(form, exc)
            except services.QueueUnavailable as exc:
                messages.error(request, str(exc))
                status = 503
            else:
                messages.success(request, f"Training job #{job.pk} queued.")
                return redirect(job)
    return render(
        request,
        "jobs/create.html",
        {"project": project, "form": form, "has_datasets": form.fields["dataset"].queryset},
        status=status,
    )


def _job(pk: int) -> TrainingJob:
    return get_object_or_404(
        TrainingJob.objects.select_related("project", "dataset", "cancelled_by"), pk=pk
    )


def _live_context(job: TrainingJob) -> dict:
    try:
        version = job.version
    except ObjectDoesNotExist:
        version = None
    return {"job": job, "version": version, "history": selectors.job_history(job=job)}


@require_GET
def job_detail(request: HttpRequest, pk: int) -> HttpResponse:
    job = _job(pk)
    return render(request, "jobs/detail.html", {"project": job.project, **_live_context(job)})


@require_GET
def job_live(request: HttpRequest, pk: int) -> HttpResponse:
    """The live part of the job page (status, progress, chart data); htmx polls it."""
    return render(request, "jobs/_live.html", _live_context(_job(pk)))


@require_POST
@permission_required("webapp.train_models", raise_exception=True)
def job_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    job = _job(pk)
    try:
        job = services.training_job_cancel(job=job, user=request.user)
    except services.WrongStatus as exc:
        messages.error(request, str(exc))
    else:
        if job.status == TrainingJob.Status.CANCELLED:
            messages.success(request, f"Job #{job.pk} cancelled.")
        else:
            messages.success(request, f"Job #{job.pk} will stop after its current batch.")
    return redirect(job)
