"""The project's URLs plus the floor of the checkout benchmark."""

from django.urls import include, path

from bench.checkout.views import checkout_floor, checkout_floor_paid
from config.urls import handler400, handler403, handler404, handler500

__all__ = ["handler400", "handler403", "handler404", "handler500", "urlpatterns"]

FLOOR_PATH = "bench/floor/checkout"
FLOOR_PAID_PATH = "bench/floor-paid/checkout"

urlpatterns = [
    path(FLOOR_PATH, checkout_floor, name="bench-floor-checkout"),
    path(FLOOR_PAID_PATH, checkout_floor_paid, name="bench-floor-paid-checkout"),
    path("", include("config.urls")),
]
