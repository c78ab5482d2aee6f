"""What the admin's sign-in page needs to know about the ways in."""

from typing import Any

from django.conf import settings
from django.http import HttpRequest

from marketplace import oidc

PASSWORD_BACKEND = "django.contrib.auth.backends.ModelBackend"  # noqa: S105 - a class path


def sign_in(request: HttpRequest) -> dict[str, Any]:
    return {
        "oidc_configured": oidc.configured(),
        # Production keeps passwords for break-glass grants only (config/settings/production.py).
        "password_login": PASSWORD_BACKEND in settings.AUTHENTICATION_BACKENDS,
    }
