"""The kinds of change that need a second person (two-person approval), and who decides each.

Each app registers the kinds it applies in its AppConfig.ready(), so the registry is filled by
explicit calls a reader can follow from the app that owns the change:

- accounts: `maintenance.on`, `maintenance.off`, `role.grant`, `breakglass.grant` (Security);
- orders: `order.refund` above MARKETPLACE_APPROVAL_REFUND_MINOR (Finance);
- licensing: `signing_key.rotate`, `signing_key.revoke` (Security);
- previews: `previews.isolate_all` (Security): every preview session revoked, new ones paused.

A kind is `summary(params)` (what will happen, in words, for the people deciding), `apply(params,
actor)` (the service call that makes the change and records its own audit events; it answers
what to keep as the request's outcome), an optional `check(params)` run when the request is
filed, raising InvalidInput for what could never be applied, and an optional
`beneficiary(params)`: the pk of the user the change is for (who may not approve it). A kind whose
change reaches outside the database (a refund through the payment provider) registers with
`outside=True`: it is applied after the approval is committed, not inside its transaction.
Requests, decisions and applying are accounts.approval_services.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from marketplace.actors import Actor
from marketplace.exceptions import Conflict, InvalidInput
from marketplace.roles import has_role

Params = dict[str, Any]


@dataclass(frozen=True)
class ApprovalKind:
    kind: str
    roles: tuple[str, ...]
    summary: Callable[[Params], str]
    apply: Callable[[Params, Actor], dict[str, Any] | None]
    check: Callable[[Params], None] | None = None
    beneficiary: Callable[[Params], Any] | None = None
    outside: bool = False


_KINDS: dict[str, ApprovalKind] = {}


def register(
    kind: str,
    *,
    roles: tuple[str, ...],
    summary: Callable[[Params], str],
    apply: Callable[[Params, Actor], dict[str, Any] | None],
    check: Callable[[Params], None] | None = None,
    beneficiary: Callable[[Params], Any] | None = None,
    outside: bool = False,
) -> None:
    """Registers a kind. The same registration again (ready() run twice) is a no-op; another
    one under a name already taken is a configuration error."""
    if not roles:
        raise ImproperlyConfigured(f"approval kind {kind!r} names no role that may decide it")
    entry = ApprovalKind(kind, tuple(roles), summary, apply, check, beneficiary, outside)
    existing = _KINDS.get(kind)
    if existing is not None and existing != entry:
        raise ImproperlyConfigured(f"approval kind {kind!r} is registered twice")
    _KINDS[kind] = entry


def kind_get(kind: str) -> ApprovalKind:
    try:
        return _KINDS[kind]
    except KeyError:
        raise InvalidInput(
            f"{kind!r} is not a kind of change that takes an approval; "
            f"known kinds: {', '.join(sorted(_KINDS))}."
        ) from None


def kinds() -> list[str]:
    return sorted(_KINDS)


def may_decide(user: Any, kind: str) -> bool:
    """Whether `user` holds a role that decides `kind` (superusers hold every role). Whether
    they may decide one request is more: see accounts.approval_services."""
    entry = _KINDS.get(kind)
    return entry is not None and has_role(user, *entry.roles)


def kinds_decided_by(user: Any) -> list[str]:
    return [kind for kind in sorted(_KINDS) if may_decide(user, kind)]


# --- Refusals ------------------------------------------------------------------------------------


class ApprovalRefused(Conflict):
    """A decision that cannot be taken; nothing was written. `reason` names why, for code."""

    code = "approval-refused"
    title = "The approval step was refused"
    reason = "refused"


class ApprovalOwnRequest(ApprovalRefused):
    reason = "own_request"


class ApprovalBeneficiary(ApprovalRefused):
    """The approver is the person the change is for (a grant of their own access)."""

    reason = "beneficiary"


class ApprovalRoleMissing(ApprovalRefused):
    status = 403
    reason = "role_missing"


class ApprovalExpired(ApprovalRefused):
    reason = "expired"


class ApprovalAlreadyDecided(ApprovalRefused):
    reason = "already_decided"


class ApprovalClosed(ApprovalRefused):
    """The request is applied, rejected, expired or failed: nothing more to decide."""

    reason = "closed"
