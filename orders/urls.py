from django.urls import path

from orders import views

urlpatterns = [
    path("marketplace/stripe/webhook", views.stripe_webhook, name="stripe-webhook"),
    path(
        "marketplace/local-checkout/<str:session_id>",
        views.local_checkout,
        name="local-checkout",
    ),
    path(
        "marketplace/local-checkout/<str:session_id>/event",
        views.local_checkout_event,
        name="local-checkout-event",
    ),
    path(
        "checkout/success", views.checkout_result, {"outcome": "success"}, name="checkout-success"
    ),
    path(
        "checkout/cancelled",
        views.checkout_result,
        {"outcome": "cancelled"},
        name="checkout-cancel",
    ),
]
