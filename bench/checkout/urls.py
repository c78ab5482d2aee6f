"""The project's URLs plus the floor of the checkout benchmark."""

from django.urls import include, path

from bench.checkout.views import checkout_floor
from config.urls import handler400, handler403, handler404, handler500

__all__ = ["handler400", "handler403", "handler404", "handler500", "urlpatterns"]

FLOOR_PATH = "bench/floor/checkout"

urlpatterns = [
    path(FLOOR_PATH, checkout_floor, name="bench-floor-checkout"),
    path("", include("config.urls")),
]
