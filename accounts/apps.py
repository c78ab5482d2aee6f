from typing import Any

from django.apps import AppConfig
from django.core.exceptions import ImproperlyConfigured


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Accounts"

    def ready(self) -> None:
        register_approval_kinds()
        sign_in_ready()


def sign_in_ready() -> None:
    from django.conf import settings
    from django.contrib import admin
    from django.contrib.auth.signals import user_logged_in

    from accounts.oidc import StaffLogoutView, signed_in

    user_logged_in.connect(signed_in, dispatch_uid="accounts.oidc.signed_in")
    from marketplace.roles import ROLE_NAMES

    # The admin's sign-in page offers the identity provider (accounts.context), and its
    # "Log out" ends the session at the provider too (RP-initiated logout).
    admin.site.login_template = "accounts/admin_login.html"
    admin.site.logout = StaffLogoutView.as_view()  # type: ignore[method-assign]
    role_map = settings.OIDC_ROLE_MAP
    if not isinstance(role_map, dict) or not all(
        isinstance(group, str) and role in ROLE_NAMES for group, role in role_map.items()
    ):
        raise ImproperlyConfigured(
            "MARKETPLACE_OIDC_ROLE_MAP must be a JSON object of provider group names to "
            f"roles ({', '.join(sorted(ROLE_NAMES))})."
        )


def _role_grant_apply(params: dict[str, Any], actor: Any) -> dict[str, Any]:
    from accounts.services import account_access_grant

    return account_access_grant(params=params, actor=actor)


def _breakglass_apply(params: dict[str, Any], actor: Any) -> dict[str, Any]:
    from accounts.breakglass import breakglass_activate

    return breakglass_activate(params=params, actor=actor)


def register_approval_kinds() -> None:
    """The changes of this app that wait for a second person (accounts.approvals)."""
    from accounts import approvals, breakglass, services
    from marketplace.roles import SECURITY

    for kind, (summary, apply, check) in services.MAINTENANCE_KINDS.items():
        approvals.register(kind, roles=(SECURITY,), summary=summary, apply=apply, check=check)
    approvals.register(
        "role.grant",
        roles=(SECURITY,),
        summary=services.role_grant_summary,
        apply=_role_grant_apply,
        check=services.role_grant_check,
        beneficiary=services.role_grant_beneficiary,
    )
    approvals.register(
        breakglass.KIND,
        roles=(SECURITY,),
        summary=breakglass.breakglass_summary,
        apply=_breakglass_apply,
        check=breakglass.breakglass_check,
        beneficiary=breakglass.breakglass_beneficiary,
    )
