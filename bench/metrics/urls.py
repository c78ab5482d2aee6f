"""The project's URLs plus /metrics as it was served before: django-prometheus's view."""

from django.urls import include, path
from django_prometheus.exports import ExportToDjangoView

from config.urls import handler400, handler403, handler404, handler500

__all__ = ["handler400", "handler403", "handler404", "handler500", "urlpatterns"]

BEFORE_PATH = "bench/before/metrics"

urlpatterns = [
    path(BEFORE_PATH, ExportToDjangoView, name="bench-before-metrics"),
    path("", include("config.urls")),
]
