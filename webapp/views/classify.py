"""Classify: photos in, top-5 labels out; corrections flow back into datasets."""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from classifier.errors import ArtifactError, InvalidImageError
from webapp import selectors, services
from webapp.forms import AddToDatasetForm, ClassifyForm, CorrectionForm, add_service_errors
from webapp.models import Prediction


@dataclass
class Outcome:
    """One photo's answer on the page: the stored prediction, or why there is none."""

    filename: str
    prediction: Prediction | None = None
    error: str = ""


def _is_htmx(request: HttpRequest) -> bool:
    return request.headers.get("HX-Request") == "true"


def _page(request: HttpRequest, form: ClassifyForm, outcomes=(), status: int = 200):
    project = form["project"].value() or request.GET.get("project")
    return render(
        request,
        "classify/index.html",
        {
            "form": form,
            "outcomes": outcomes,
            "predictions": selectors.prediction_list(limit=12),
            "active_versions": selectors.active_versions(),
            "selected_project": project,
        },
        status=status,
    )


@require_GET
def classify(request: HttpRequest) -> HttpResponse:
    projects = selectors.classify_projects()
    chosen = request.GET.get("project") or (projects[0].slug if projects else None)
    return _page(request, ClassifyForm(projects=projects, initial={"project": chosen}))


@require_POST
def classify_photos(request: HttpRequest) -> HttpResponse:
    """Classify each uploaded photo with the chosen project's active version."""
    form = ClassifyForm(request.POST, request.FILES, projects=selectors.classify_projects())
    if not form.is_valid():
        if _is_htmx(request):
            return render(
                request, "classify/_results.html", {"form_errors": form.errors}, status=400
            )
        return _page(request, form, status=400)
    project = form.cleaned_data["project"]
    outcomes = []
    for upload in form.cleaned_data["photos"]:
        outcome = Outcome(filename=upload.name)
        try:
            outcome.prediction = services.prediction_create(
                project=project,
                image=upload.read(),
                filename=upload.name,
                user=request.user,
                source=Prediction.Source.WEB,
            )
        except (
            InvalidImageError,
            ArtifactError,
            services.NoActiveVersion,
            services.UploadTooLarge,
        ) as exc:
            outcome.error = str(exc)
        outcomes.append(outcome)
    if _is_htmx(request):
        return render(request, "classify/_results.html", {"outcomes": outcomes})
    return _page(request, form, outcomes)


def _prediction(pk: int) -> Prediction:
    return get_object_or_404(Prediction.objects.select_related("project"), pk=pk)


def _card(request: HttpRequest, prediction: Prediction, status: int = 200, **forms):
    return render(
        request,
        "classify/_prediction.html",
        {"prediction": prediction, **forms},
        status=status,
    )


@require_POST
def prediction_correct(request: HttpRequest, pk: int) -> HttpResponse:
    """Store the right label for a wrong answer (anyone who may classify may correct)."""
    prediction = _prediction(pk)
    form = CorrectionForm(request.POST)
    if form.is_valid():
        try:
            prediction = services.prediction_correct(
                prediction=prediction, label=form.cleaned_data["label"], user=request.user
            )
        except ValidationError as exc:
            add_service_errors(form, exc)
        else:
            if _is_htmx(request):
                return _card(request, prediction)
            messages.success(request, f"Marked as “{prediction.corrected_label}”.")
            return redirect("classify")
    if _is_htmx(request):
        return _card(request, prediction, status=400, correction_form=form)
    messages.error(request, " ".join(m for errs in form.errors.values() for m in errs))
    return redirect("classify")


@require_POST
@permission_required("webapp.train_models", raise_exception=True)
def prediction_add_to_dataset(request: HttpRequest, pk: int) -> HttpResponse:
    """Copy the kept photo into a dataset under its corrected (else predicted) label."""
    prediction = _prediction(pk)
    form = AddToDatasetForm(request.POST, project=prediction.project)
    if form.is_valid():
        try:
            prediction = services.prediction_add_to_dataset(
                prediction=prediction, dataset=form.cleaned_data["dataset"], user=request.user
            )
        except ValidationError as exc:
            add_service_errors(form, exc)
        else:
            if _is_htmx(request):
                return _card(request, prediction)
            messages.success(request, f"Added to “{prediction.added_to_dataset.name}”.")
            return redirect("classify")
    if _is_htmx(request):
        return _card(request, prediction, status=400, dataset_form=form)
    messages.error(request, " ".join(m for errs in form.errors.values() for m in errs))
    return redirect("classify")
