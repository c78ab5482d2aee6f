from django.urls import path

from licensing.api import views

urlpatterns = [
    path("orders/<uuid:order_id>/license", views.OrderLicenseView.as_view(), name="order-license"),
    path(
        "orders/<uuid:order_id>/delivery", views.OrderDeliveryView.as_view(), name="order-delivery"
    ),
    path("licenses/verify", views.LicenseVerifyView.as_view(), name="license-verify"),
    path("proofs/<uuid:proof_id>", views.ProofView.as_view(), name="proof-detail"),
    path("me/delivery-key", views.DeliveryKeyView.as_view(), name="delivery-key"),
]
