"""Classify: photos in, top-5 labels out; corrections flow back into datasets. Many
photos (a zip, or a folder's worth) go to a batch classified in the background."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.core.exceptions import TooManyFilesSent, ValidationError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from classifier.errors import ArtifactError, InvalidImageError
from webapp import selectors, services
from webapp.forms import (
    AddToDatasetForm,
    BatchForm,
    ClassifyForm,
    CorrectionForm,
    add_service_errors,
)
from webapp.models import Prediction


@dataclass
class Outcome:
    """One photo's answer on the page: the stored prediction, or why there is none."""

    filename: str
    prediction: Prediction | None = None
    error: str = ""


def _is_htmx(request: HttpRequest) -> bool:
    return request.headers.get("HX-Request") == "true"


def _page(
    request: HttpRequest,
    form: ClassifyForm,
    outcomes=(),
    status: int = 200,
    batch_form: BatchForm | None = None,
):
    project = form["project"].value() or request.GET.get("project")
    if batch_form is None:
        batch_form = BatchForm(
            projects=form.fields["project"].queryset, initial={"project": project}
        )
    return render(
        request,
        "classify/index.html",
        {
            "form": form,
            "outcomes": outcomes,
            "predictions": selectors.prediction_list(limit=12),
            "active_versions": selectors.active_versions(),
            "selected_project": project,
            "batch_form": batch_form,
            "recent_batches": selectors.batch_list(limit=5),
            "max_zip_mb": settings.GRAFT_MAX_ZIP_MB,
            "max_files": settings.DATA_UPLOAD_MAX_NUMBER_FILES,
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
    projects = selectors.classify_projects()
    try:
        form = ClassifyForm(request.POST, request.FILES, projects=projects)
    except TooManyFilesSent:  # the upload could not even be read
        refusal = (
            f"Send at most {settings.DATA_UPLOAD_MAX_NUMBER_FILES} photos at once; "
            "classify more as a batch (“Many photos?” below)."
        )
        if _is_htmx(request):
            return render(
                request,
                "classify/_results.html",
                {"form_errors": {"photos": [refusal]}},
                status=400,
            )
        messages.error(request, refusal)
        return _page(request, ClassifyForm(projects=projects), status=400)
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
            services.photo_size_check(size=upload.size)
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


def _wants_json(request: HttpRequest) -> bool:
    return "application/json" in request.headers.get("Accept", "")


@require_POST
def batch_create(request: HttpRequest) -> HttpResponse:
    """Store a zip or several photos, classify them in the background, open the batch.

    Answers JSON to the page's progress-bar upload. A refusal stores nothing and says why:
    400 bad input, 409 no active version, 413 too large, 503 no broker or no worker.
    """
    projects = selectors.classify_projects()
    status = 400
    try:
        form = BatchForm(request.POST, request.FILES, projects=projects)
    except TooManyFilesSent:  # the upload could not even be read
        refusal = (
            f"Send at most {settings.DATA_UPLOAD_MAX_NUMBER_FILES} photos at once; "
            "put more in a zip."
        )
        if _wants_json(request):
            return JsonResponse({"errors": {"files": [{"message": refusal}]}}, status=400)
        messages.error(request, refusal)
        return _page(request, ClassifyForm(projects=projects), status=400)
    if form.is_valid():
        try:
            batch = services.batch_create(
                project=form.cleaned_data["project"],
                files=form.cleaned_data["files"],
                user=request.user,
                check_workers=True,
            )
        except ValidationError as exc:
            add_service_errors(form, exc)
        except services.NoActiveVersion as exc:
            form.add_error("project", str(exc))
            status = 409
        except services.UploadTooLarge as exc:
            form.add_error("files", str(exc))
            status = 413
        except services.QueueUnavailable as exc:
            form.add_error(None, str(exc))
            status = 503
        else:
            messages.success(
                request,
                f"Batch #{batch.pk} queued: {batch.total} photo{'s' if batch.total != 1 else ''} "
                f"for {batch.project.name} {batch.version_label}.",
            )
            if _wants_json(request):
                return JsonResponse({"redirect": batch.get_absolute_url()})
            return redirect(batch)
    if _wants_json(request):
        return JsonResponse({"errors": form.errors.get_json_data()}, status=status)
    chosen = form["project"].value() if form.is_bound else None
    page_form = ClassifyForm(projects=projects, initial={"project": chosen})
    return _page(request, page_form, status=status, batch_form=form)


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
