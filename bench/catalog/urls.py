"""The project's URLs plus the floor of the catalog benchmark."""

from django.urls import include, path

from bench.catalog.views import sku_list_floor
from config.urls import handler400, handler403, handler404, handler500

__all__ = ["handler400", "handler403", "handler404", "handler500", "urlpatterns"]

FLOOR_PATH = "bench/floor/skus"

urlpatterns = [
    path(FLOOR_PATH, sku_list_floor, name="bench-floor-skus"),
    path("", include("config.urls")),
]
