from django.urls import path

from orders import local_views, views

urlpatterns = [
    path("marketplace/stripe/webhook", views.stripe_webhook, name="stripe-webhook"),
    path(
        "marketplace/local-checkout/<str:session_id>",
        local_views.local_checkout,
        name="local-checkout",
    ),
    path(
        "marketplace/local-checkout/<str:session_id>/event",
        local_views.local_checkout_event,
        name="local-checkout-event",
    ),
    path(
        "checkout/success",
        local_views.checkout_result,
        {"outcome": "success"},
        name="checkout-success",
    ),
    path(
        "checkout/cancelled",
        local_views.checkout_result,
        {"outcome": "cancelled"},
        name="checkout-cancel",
    ),
]
