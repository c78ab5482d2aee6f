from typing import Any

from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Accounts"

    def ready(self) -> None:
        register_approval_kinds()


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
    )
    approvals.register(
        breakglass.KIND,
        roles=(SECURITY,),
        summary=breakglass.breakglass_summary,
        apply=_breakglass_apply,
        check=breakglass.breakglass_check,
    )
