"""Datasets: the four ways in (zip, per-class photos, server folder, URL), the dataset
page with its import report, thumbnails of its photos, and the confirmed delete."""

from __future__ import annotations

import io
from pathlib import Path

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.core.exceptions import ValidationError
from django.forms import Form
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from classifier.images import SUPPORTED_SUFFIXES
from webapp import selectors, services
from webapp.forms import (
    AddImagesForm,
    DatasetFolderForm,
    DatasetNameForm,
    DatasetUrlForm,
    DatasetZipForm,
    add_service_errors,
)
from webapp.models import Dataset, Project

THUMB_SIZES = (96, 160, 320)


def _project(slug: str) -> Project:
    return get_object_or_404(Project, slug=slug)


def _dataset(slug: str, pk: int) -> Dataset:
    return get_object_or_404(Dataset.objects.select_related("project"), project__slug=slug, pk=pk)


def _wants_json(request: HttpRequest) -> bool:
    return "application/json" in request.headers.get("Accept", "")


def _render_new(request: HttpRequest, project: Project, status: int = 200, **forms: Form):
    context = {
        "project": project,
        "zip_form": forms.get("zip_form") or DatasetZipForm(),
        "empty_form": forms.get("empty_form") or DatasetNameForm(),
        "folder_form": forms.get("folder_form") or DatasetFolderForm(),
        "url_form": forms.get("url_form") or DatasetUrlForm(),
        "import_roots": settings.GRAFT_IMPORT_ROOTS,
        "max_zip_mb": settings.GRAFT_MAX_ZIP_MB,
        "open": next(iter(forms), "zip_form"),
    }
    return render(request, "datasets/new.html", context, status=status)


@require_GET
@permission_required("webapp.train_models", raise_exception=True)
def dataset_new(request: HttpRequest, slug: str) -> HttpResponse:
    return _render_new(request, _project(slug))


@require_POST
@permission_required("webapp.train_models", raise_exception=True)
def dataset_upload_zip(request: HttpRequest, slug: str) -> HttpResponse:
    """Keep the zip and start its import. Answers JSON to the page's progress-bar upload."""
    project = _project(slug)
    form = DatasetZipForm(request.POST, request.FILES)
    status = 400
    if form.is_valid():
        try:
            dataset = services.dataset_import_zip(
                project=project,
                name=form.cleaned_data["name"],
                upload=form.cleaned_data["archive"],
                user=request.user,
            )
        except ValidationError as exc:
            add_service_errors(form, exc)
        except services.QueueUnavailable as exc:
            form.add_error(None, str(exc))
            status = 503
        else:
            messages.success(request, f"Uploaded “{dataset.source_detail}”; importing it now.")
            if _wants_json(request):
                return JsonResponse({"redirect": dataset.get_absolute_url()})
            return redirect(dataset)
    if _wants_json(request):
        return JsonResponse({"errors": form.errors.get_json_data()}, status=status)
    return _render_new(request, project, status=status, zip_form=form)


@require_POST
@permission_required("webapp.train_models", raise_exception=True)
def dataset_create(request: HttpRequest, slug: str) -> HttpResponse:
    project = _project(slug)
    form = DatasetNameForm(request.POST)
    if form.is_valid():
        try:
            dataset = services.dataset_create_empty(
                project=project, name=form.cleaned_data["name"], user=request.user
            )
        except ValidationError as exc:
            add_service_errors(form, exc)
        else:
            messages.success(request, f"Dataset “{dataset.name}” created; add photos per class.")
            return redirect(dataset)
    return _render_new(request, project, status=400, empty_form=form)


@require_POST
@permission_required("webapp.train_models", raise_exception=True)
def dataset_import_folder(request: HttpRequest, slug: str) -> HttpResponse:
    project = _project(slug)
    form = DatasetFolderForm(request.POST)
    status = 400
    if form.is_valid():
        try:
            dataset = services.dataset_import_directory(
                project=project,
                name=form.cleaned_data["name"],
                source_dir=form.cleaned_data["path"],
                user=request.user,
                allowed_roots=settings.GRAFT_IMPORT_ROOTS,
            )
        except ValidationError as exc:
            add_service_errors(form, exc)
        except services.QueueUnavailable as exc:
            form.add_error(None, str(exc))
            status = 503
        else:
            messages.success(request, f"Importing {dataset.source_detail}.")
            return redirect(dataset)
    return _render_new(request, project, status=status, folder_form=form)


@require_POST
@permission_required("webapp.train_models", raise_exception=True)
def dataset_import_url(request: HttpRequest, slug: str) -> HttpResponse:
    """Import TensorFlow's flower_photos sample from its public URL."""
    project = _project(slug)
    form = DatasetUrlForm(request.POST)
    status = 400
    if form.is_valid():
        try:
            dataset = services.dataset_import_url(
                project=project, name=form.cleaned_data["name"], user=request.user
            )
        except ValidationError as exc:
            add_service_errors(form, exc)
        except services.QueueUnavailable as exc:
            form.add_error(None, str(exc))
            status = 503
        else:
            messages.success(request, "Downloading the flower_photos sample (about 220 MB).")
            return redirect(dataset)
    return _render_new(request, project, status=status, url_form=form)


def _detail_context(dataset: Dataset, add_form: AddImagesForm | None = None) -> dict:
    samples = selectors.dataset_samples(dataset=dataset) if dataset.is_ready else {}
    return {
        "project": dataset.project,
        "dataset": dataset,
        "classes": [
            {"name": name, "count": count, "samples": samples.get(name, [])}
            for name, count in dataset.class_rows
        ],
        "jobs": selectors.job_list(project=dataset.project).filter(dataset=dataset)[:20],
        "add_form": add_form or AddImagesForm(),
    }


@require_GET
def dataset_detail(request: HttpRequest, slug: str, pk: int) -> HttpResponse:
    dataset = _dataset(slug, pk)
    return render(request, "datasets/detail.html", _detail_context(dataset))


@require_GET
def dataset_status(request: HttpRequest, slug: str, pk: int) -> HttpResponse:
    """The page polls this while importing; once done, htmx reloads the whole page."""
    dataset = _dataset(slug, pk)
    if not dataset.is_importing:
        return HttpResponse(status=204, headers={"HX-Refresh": "true"})
    return render(request, "datasets/_importing.html", {"dataset": dataset})


@require_http_methods(["POST"])
@permission_required("webapp.train_models", raise_exception=True)
def dataset_add_images(request: HttpRequest, slug: str, pk: int) -> HttpResponse:
    dataset = _dataset(slug, pk)
    form = AddImagesForm(request.POST, request.FILES)
    if form.is_valid():
        # One photo in memory at a time, and never more of it than shows it is too large.
        limit = services.max_image_bytes() + 1
        files = ((f.name, f.read(limit)) for f in form.cleaned_data["files"])
        class_name = form.cleaned_data["class_name"]
        try:
            report = services.dataset_add_images(
                dataset=dataset, class_name=class_name, files=files, user=request.user
            )
        except ValidationError as exc:
            add_service_errors(form, exc)
        else:
            class_name = report.class_spellings.get(class_name.casefold(), class_name)
            messages.success(request, f"Added {report.written} photo(s) to “{class_name}”.")
            for name, reason in report.rejected:
                messages.warning(request, f"Refused {name}: {reason}")
            return redirect(dataset)
    dataset.refresh_from_db()
    return render(request, "datasets/detail.html", _detail_context(dataset, form), status=400)


@require_http_methods(["GET", "POST"])
@permission_required("webapp.train_models", raise_exception=True)
def dataset_delete(request: HttpRequest, slug: str, pk: int) -> HttpResponse:
    """Ask first (saying why not, when it cannot be deleted), then delete on POST."""
    dataset = _dataset(slug, pk)
    if request.method == "GET":
        context = {
            "project": dataset.project,
            "dataset": dataset,
            "refusal": selectors.dataset_delete_refusal(dataset=dataset),
        }
        return render(request, "datasets/confirm_delete.html", context)
    try:
        services.dataset_delete(dataset=dataset, user=request.user)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
        return redirect(dataset)
    messages.success(request, f"Dataset “{dataset.name}” and its photos were deleted.")
    return redirect(dataset.project)


@require_GET
def dataset_thumbnail(request: HttpRequest, slug: str, pk: int, relpath: str) -> HttpResponse:
    """A small JPEG of one of the dataset's photos (never a file outside its folder)."""
    dataset = _dataset(slug, pk)
    root = dataset.path.resolve()
    path = (root / relpath).resolve()
    if (
        not path.is_relative_to(root)
        or path.suffix.lower() not in SUPPORTED_SUFFIXES
        or not path.is_file()
    ):
        raise Http404("No such photo in this dataset.")
    try:
        size = int(request.GET.get("size", 160))
    except ValueError:
        size = 160
    size = min(THUMB_SIZES, key=lambda s: abs(s - size))
    return HttpResponse(
        _thumbnail(path, size),
        content_type="image/jpeg",
        headers={"Cache-Control": "private, max-age=3600"},
    )


def _thumbnail(path: Path, size: int) -> bytes:
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as image:
            image.draft("RGB", (size * 2, size * 2))
            image = ImageOps.exif_transpose(image).convert("RGB")
            image.thumbnail((size, size))
            out = io.BytesIO()
            image.save(out, "JPEG", quality=80)
            return out.getvalue()
    except (OSError, ValueError, Image.DecompressionBombError):
        raise Http404("This photo cannot be read.") from None
