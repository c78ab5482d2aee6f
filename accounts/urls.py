"""Staff sign-in through the identity provider. The names are mozilla-django-oidc's own, which
its renewal middleware looks up."""

from django.urls import path

from accounts.oidc import StaffCallbackView, StaffLoginView, StaffLogoutView

urlpatterns = [
    path("oidc/authenticate/", StaffLoginView.as_view(), name="oidc_authentication_init"),
    path("oidc/callback/", StaffCallbackView.as_view(), name="oidc_authentication_callback"),
    path("oidc/logout/", StaffLogoutView.as_view(), name="oidc_logout"),
]
