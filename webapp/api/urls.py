"""URLs of the JSON API, mounted at /api/v1/ (names: ``api:<name>``)."""

from __future__ import annotations

from collections.abc import Callable

from django.contrib.auth.decorators import login_not_required
from django.urls import path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from webapp.api import views
from webapp.api.errors import not_found

app_name = "api"


def api(view: type) -> Callable:
    """DRF authenticates API requests itself: no login redirect from the middleware."""
    return login_not_required(view.as_view())


urlpatterns = [
    path("projects", api(views.ProjectList), name="project_list"),
    path("projects/<slug:slug>", api(views.ProjectDetail), name="project_detail"),
    path("projects/<slug:slug>/classify", api(views.Classify), name="classify"),
    path("projects/<slug:slug>/datasets", api(views.DatasetList), name="dataset_list"),
    path("projects/<slug:slug>/jobs", api(views.JobListCreate), name="job_list"),
    path("projects/<slug:slug>/versions", api(views.VersionList), name="version_list"),
    path(
        "projects/<slug:slug>/versions/<int:number>",
        api(views.VersionDetail),
        name="version_detail",
    ),
    path(
        "projects/<slug:slug>/versions/<int:number>/activate",
        api(views.VersionActivate),
        name="version_activate",
    ),
    path("projects/<slug:slug>/rollback", api(views.VersionRollback), name="version_rollback"),
    path("projects/<slug:slug>/batches", api(views.BatchCreate), name="batch_create"),
    path("jobs/<int:pk>", api(views.JobDetail), name="job_detail"),
    path("jobs/<int:pk>/cancel", api(views.JobCancel), name="job_cancel"),
    path("batches/<int:pk>", api(views.BatchDetail), name="batch_detail"),
    path("batches/<int:pk>/cancel", api(views.BatchCancel), name="batch_cancel"),
    re_path(
        r"^batches/(?P<pk>\d+)/results\.(?P<fmt>csv|json)$",
        api(views.BatchResults),
        name="batch_results",
    ),
    path("schema", login_not_required(SpectacularAPIView.as_view()), name="schema"),
    path(
        "docs",
        login_not_required(SpectacularSwaggerView.as_view(url_name="api:schema")),
        name="docs",
    ),
    re_path(r"^.*$", login_not_required(not_found)),
]
