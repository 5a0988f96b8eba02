"""API views: authenticate, find the object (404 for unknown ones), call one service.

Errors raised by services become JSON responses in ``webapp.api.errors``. Every view here
is wrapped in ``login_not_required`` by ``webapp.api.urls``: DRF authenticates API
requests itself (token or session) and answers 401 in JSON instead of a login redirect.
"""

from __future__ import annotations

from django.db.models import Prefetch, QuerySet
from django.http import FileResponse
from django.shortcuts import get_object_or_404
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    inline_serializer,
)
from rest_framework import generics, serializers, status
from rest_framework.exceptions import PermissionDenied
from rest_framework.exceptions import ValidationError as APIValidationError
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from webapp import selectors, services
from webapp.api import serializers as s
from webapp.api.errors import error_response
from webapp.models import (
    BatchClassification,
    Dataset,
    EpochRecord,
    ModelVersion,
    Prediction,
    Project,
    TrainingJob,
)

# Multipart framing around the photo: boundaries, headers and the field name.
MULTIPART_SLACK = 64 * 1024

ERROR = inline_serializer(
    "Error", {"detail": serializers.CharField(), "code": serializers.CharField()}
)


def _errors(*codes: int) -> dict[int, OpenApiResponse]:
    return {code: OpenApiResponse(ERROR) for code in codes}


def _require(request: Request, permission: str) -> None:
    if not request.user.has_perm(permission):
        raise PermissionDenied("Your account may not do this; ask an administrator.")


def _project(slug: str) -> Project:
    return get_object_or_404(Project, slug=slug)


def _jobs() -> QuerySet[TrainingJob]:
    return TrainingJob.objects.select_related(
        "project", "version", "cancelled_by"
    ).prefetch_related(Prefetch("epochs", queryset=EpochRecord.objects.order_by("epoch")))


class ProjectList(generics.ListAPIView):
    """All projects, with the number of each one's active version."""

    serializer_class = s.ProjectSerializer

    def get_queryset(self) -> QuerySet[Project]:
        return selectors.project_list()


class ProjectDetail(generics.RetrieveAPIView):
    serializer_class = s.ProjectSerializer
    queryset = Project.objects.all()
    lookup_field = "slug"


class Classify(APIView):
    """Classify one photo with the project's active version (multipart field ``image``)."""

    parser_classes = [MultiPartParser]

    @extend_schema(
        request={"multipart/form-data": s.ClassifySerializer},
        responses={
            200: s.ClassifyResponseSerializer,
            **_errors(400, 401, 404, 409, 413, 415, 429, 503),
        },
    )
    def post(self, request: Request, slug: str) -> Response:
        project = _project(slug)
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
        if declared > services.max_image_bytes() + MULTIPART_SLACK:
            raise services.UploadTooLarge(
                f"The photo is over the {services.max_image_bytes() // 2**20} MB limit."
            )
        upload = request.FILES.get("image")
        if upload is None:
            return error_response(
                "Send the photo as the multipart form field “image”.",
                "missing_image",
                status.HTTP_400_BAD_REQUEST,
            )
        if upload.size > services.max_image_bytes():
            raise services.UploadTooLarge(
                f"The photo is over the {services.max_image_bytes() // 2**20} MB limit."
            )
        prediction = services.prediction_create(
            project=project,
            image=upload.read(),
            filename=upload.name or "",
            user=request.user,
            source=Prediction.Source.API,
        )
        return Response(s.ClassifyResponseSerializer.of(prediction))


class DatasetList(generics.ListAPIView):
    serializer_class = s.DatasetSerializer

    def get_queryset(self) -> QuerySet[Dataset]:
        return selectors.dataset_list(project=_project(self.kwargs["slug"]))


class JobListCreate(generics.ListAPIView):
    """A project's training jobs, newest first, each with its epoch history; POST starts one."""

    serializer_class = s.JobSerializer

    def get_queryset(self) -> QuerySet[TrainingJob]:
        return _jobs().filter(project=_project(self.kwargs["slug"]))

    @extend_schema(
        request=s.JobCreateSerializer,
        responses={201: s.JobSerializer, **_errors(400, 401, 403, 404, 503)},
    )
    def post(self, request: Request, slug: str) -> Response:
        project = _project(slug)
        _require(request, "webapp.train_models")
        data = s.JobCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        dataset = Dataset.objects.filter(project=project, pk=data.validated_data["dataset"]).first()
        if dataset is None:
            raise APIValidationError({"dataset": ["This project has no dataset with that id."]})
        job = services.training_job_create(
            project=project,
            dataset=dataset,
            config=data.validated_data["config"],
            user=request.user,
            activate_on_success=data.validated_data["activate_on_success"],
        )
        job = _jobs().get(pk=job.pk)
        return Response(s.JobSerializer(job).data, status=status.HTTP_201_CREATED)


class JobDetail(generics.RetrieveAPIView):
    serializer_class = s.JobSerializer

    def get_queryset(self) -> QuerySet[TrainingJob]:
        return _jobs()


class JobCancel(APIView):
    """Cancel a training job (needs ``train_models``): a queued one is cancelled at once; a
    running one has ``cancel_requested`` set and stops after its current batch, keeping its
    checkpoints out of any version. 409 once it has finished."""

    @extend_schema(request=None, responses={200: s.JobSerializer, **_errors(401, 403, 404, 409)})
    def post(self, request: Request, pk: int) -> Response:
        _require(request, "webapp.train_models")
        job = get_object_or_404(TrainingJob, pk=pk)
        services.training_job_cancel(job=job, user=request.user)
        return Response(s.JobSerializer(_jobs().get(pk=pk)).data)


class VersionList(generics.ListAPIView):
    serializer_class = s.VersionSerializer

    def get_queryset(self) -> QuerySet[ModelVersion]:
        return selectors.version_list(project=_project(self.kwargs["slug"]))


class VersionDetail(generics.RetrieveAPIView):
    serializer_class = s.VersionSerializer
    lookup_field = "number"

    def get_queryset(self) -> QuerySet[ModelVersion]:
        return ModelVersion.objects.filter(project=_project(self.kwargs["slug"]))


class VersionActivate(APIView):
    """Make this version the one that answers classifications (needs manage_versions); 400
    when its files are missing or damaged (the active version stays)."""

    @extend_schema(
        request=None, responses={200: s.VersionSerializer, **_errors(400, 401, 403, 404)}
    )
    def post(self, request: Request, slug: str, number: int) -> Response:
        version = get_object_or_404(ModelVersion, project=_project(slug), number=number)
        _require(request, "webapp.manage_versions")
        version = services.model_version_activate(version=version, user=request.user)
        return Response(s.VersionSerializer(version).data)


class VersionRollback(APIView):
    """Activate the previously active version again (needs manage_versions)."""

    @extend_schema(
        request=None, responses={200: s.VersionSerializer, **_errors(400, 401, 403, 404)}
    )
    def post(self, request: Request, slug: str) -> Response:
        project = _project(slug)
        _require(request, "webapp.manage_versions")
        version = services.model_version_rollback(project=project, user=request.user)
        return Response(s.VersionSerializer(version).data)


class BatchCreate(APIView):
    """Classify many photos in the background: one zip, or several ``files`` fields."""

    parser_classes = [MultiPartParser]

    @extend_schema(
        request={"multipart/form-data": s.BatchCreateSerializer},
        responses={202: s.BatchSerializer, **_errors(400, 401, 404, 409, 413, 415, 503)},
    )
    def post(self, request: Request, slug: str) -> Response:
        project = _project(slug)
        batch = services.batch_create(
            project=project, files=request.FILES.getlist("files"), user=request.user
        )
        body = s.BatchSerializer(batch, context={"request": request}).data
        response = Response(body, status=status.HTTP_202_ACCEPTED)
        response["Location"] = request.build_absolute_uri(
            reverse("api:batch_detail", args=[batch.pk])
        )
        return response


class BatchDetail(generics.RetrieveAPIView):
    """A batch's progress; ``results_csv``/``results_json`` links once it succeeded (or was
    cancelled after classifying some photos). DELETE removes a finished batch."""

    serializer_class = s.BatchSerializer
    queryset = BatchClassification.objects.select_related("project")

    @extend_schema(
        request=None,
        responses={204: OpenApiResponse(description="Deleted."), **_errors(401, 403, 404, 409)},
    )
    def delete(self, request: Request, pk: int) -> Response:
        """Delete a finished batch and its files (whoever started it, or a trainer); its
        predictions stay in the log. 409 while it is queued or running."""
        services.batch_delete(batch=self.get_object(), user=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class BatchCancel(APIView):
    """Cancel a batch (whoever started it, or a trainer): a queued one is cancelled at once;
    a running one has ``cancel_requested`` set and stops before its next chunk of photos,
    keeping the results so far. 409 once it has finished."""

    @extend_schema(request=None, responses={200: s.BatchSerializer, **_errors(401, 403, 404, 409)})
    def post(self, request: Request, pk: int) -> Response:
        batch = get_object_or_404(BatchClassification.objects.select_related("project"), pk=pk)
        batch = services.batch_cancel(batch=batch, user=request.user)
        return Response(s.BatchSerializer(batch, context={"request": request}).data)


class BatchResults(APIView):
    """A finished batch's results, as CSV or JSON (409 until it has some)."""

    @extend_schema(
        parameters=[
            OpenApiParameter("id", int, OpenApiParameter.PATH),
            OpenApiParameter("fmt", str, OpenApiParameter.PATH, enum=["csv", "json"]),
        ],
        responses={
            (200, "text/csv"): OpenApiTypes.BINARY,
            (200, "application/json"): s.BatchResultsSerializer,
            **_errors(401, 404, 409),
        },
    )
    def get(self, request: Request, pk: int, fmt: str) -> FileResponse | Response:
        batch = get_object_or_404(BatchClassification, pk=pk)
        if not batch.has_results:
            return error_response(
                "The batch was cancelled before it classified any photo, so it has no results."
                if batch.status == BatchClassification.Status.CANCELLED
                else f"The batch is {batch.get_status_display().lower()}; results come when it "
                "has succeeded.",
                "not_ready",
                status.HTTP_409_CONFLICT,
            )
        path = batch.path / f"results.{fmt}"
        if not path.is_file():
            return error_response("The results file is missing.", "not_found", 404)
        return FileResponse(
            open(path, "rb"),  # noqa: SIM115 - FileResponse closes it
            as_attachment=True,
            filename=f"{batch.project.slug}-batch-{batch.pk}.{fmt}",
            content_type="text/csv; charset=utf-8" if fmt == "csv" else "application/json",
        )
