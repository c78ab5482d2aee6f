from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from licensing.api import views as licensing_views
from marketplace.landing import landing
from marketplace.metrics import metrics
from marketplace.views import health, health_details, jwks
from previews import serving as preview_serving

urlpatterns = [
    path("", landing, name="landing"),
    path("health", health, name="health"),
    path("health/details", health_details, name="health-details"),
    path(".well-known/jwks.json", jwks, name="jwks"),
    path("metrics", metrics, name="metrics"),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/v1/", include("catalog.api.urls")),
    path("api/v1/", include("marketplace.api.urls")),
    path("api/v1/", include("accounts.api.urls")),
    path("api/v1/", include("orders.api.urls")),
    path("api/v1/", include("licensing.api.urls")),
    path("api/v1/", include("previews.api.urls")),
    path(
        "marketplace/deliveries/<str:token>",
        licensing_views.package_download,
        name="delivery-package",
    ),
    path("previews/<str:token>", preview_serving.preview_root, name="preview-root"),
    path("previews/<str:token>/", preview_serving.preview_serve, name="preview-serve"),
    path("previews/<str:token>/<path:path>", preview_serving.preview_serve, name="preview-file"),
    path("", include("orders.urls")),
    path("", include("accounts.urls")),
    path("admin/", admin.site.urls),
]

handler400 = "marketplace.views.bad_request"
handler403 = "marketplace.views.permission_denied"
handler404 = "marketplace.views.page_not_found"
handler500 = "marketplace.views.server_error"
