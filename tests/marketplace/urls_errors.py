"""URLs for tests of error rendering: views that fail in the ways real views can."""

from django.core.exceptions import PermissionDenied, ValidationError
from django.urls import include, path
from rest_framework.decorators import api_view, permission_classes
from rest_framework.permissions import AllowAny

from marketplace.exceptions import Conflict


@api_view(["GET"])
@permission_classes([AllowAny])
def domain_error(request):
    raise Conflict("The order is already paid.", extra={"order": "abc"})


@api_view(["GET"])
@permission_classes([AllowAny])
def django_validation_error(request):
    raise ValidationError({"email": ["Enter a valid email."], "__all__": ["Broken."]})


@api_view(["GET"])
@permission_classes([AllowAny])
def django_permission_denied(request):
    raise PermissionDenied


def crash(request):
    raise RuntimeError("boom")


urlpatterns = [
    path("domain", domain_error),
    path("django-validation", django_validation_error),
    path("denied", django_permission_denied),
    path("crash", crash),
    path("", include("config.urls")),
]

handler404 = "marketplace.views.page_not_found"
handler500 = "marketplace.views.server_error"
