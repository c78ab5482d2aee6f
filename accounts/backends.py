"""The break-glass sign-in (accounts.breakglass): a password that works only for the staff
account of an approved, unrevoked grant, within its window.

Listed in AUTHENTICATION_BACKENDS after django-axes, which counts and locks out the refused
attempts: a refusal here writes nothing of its own. A session opened with a grant lasts no
longer than the grant: get_user answers nobody once it has ended or been revoked.
"""

from functools import cache
from typing import Any

from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.hashers import check_password, make_password
from django.http import HttpRequest
from django.utils import timezone

from accounts.breakglass import breakglass_use
from accounts.models import BreakGlassGrant
from marketplace.clients import client_ip
from marketplace.models import User


@cache
def _no_grant_hash() -> str:
    """Checked once per attempt for an account without a grant, so that the time taken does not
    tell which accounts have one (Django's ModelBackend hashes for unknown users likewise)."""
    return make_password("no break-glass grant")


class BreakGlassBackend(ModelBackend):
    def authenticate(
        self,
        request: HttpRequest | None,
        username: str | None = None,
        password: str | None = None,
        **kwargs: Any,
    ) -> User | None:
        if username is None:
            username = kwargs.get(User.USERNAME_FIELD)
        if not username or not password:
            return None
        now = timezone.now()
        grants = list(
            BreakGlassGrant.objects.active_at(now)
            .filter(user__email__iexact=username, user__is_staff=True, user__is_active=True)
            .select_related("user")
            .order_by("pk")
        )
        if not grants:
            check_password(password, _no_grant_hash())
            return None
        for grant in grants:
            if check_password(password, grant.password_hash) and breakglass_use(
                grant_pk=grant.pk, client_ip=client_ip(request) if request is not None else None
            ):
                if request is not None and hasattr(request, "session"):
                    # Which grant opened the session, for whoever reads it later.
                    request.session["breakglass_grant"] = grant.pk
                return grant.user
        return None

    def get_user(self, user_id: Any) -> User | None:
        user = super().get_user(user_id)
        if user is None or not user.is_staff:
            return None
        active = BreakGlassGrant.objects.active_at(timezone.now()).filter(user=user).exists()
        return user if active else None
