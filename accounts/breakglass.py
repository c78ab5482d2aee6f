"""Break-glass: a password login for one staff account for a few hours, for when single
sign-on is out (docs/approvals.md#break-glass).

`breakglass_grant_request` makes a random password, keeps only its hash on a grant and files a
`breakglass.grant` request; nothing works until a second person approves it, which starts the
window (`breakglass_activate`). accounts.backends.BreakGlassBackend lets the password in while
the window is open and the grant is not revoked, each use counted and recorded
(`breakglass_use`). Revoking (`breakglass_revoke`) is immediate and needs no approval.
"""

import secrets
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.hashers import make_password
from django.db import transaction
from django.utils import timezone

from accounts.approval_services import approval_request
from accounts.models import ApprovalRequest, BreakGlassGrant
from audit.chain import format_time
from audit.services import audit_append
from marketplace.actors import Actor
from marketplace.exceptions import Conflict, InvalidInput
from marketplace.models import User

KIND = "breakglass.grant"


def _subject(grant: BreakGlassGrant) -> tuple[str, str]:
    return ("breakglass_grant", str(grant.pk))


@transaction.atomic
def breakglass_grant_request(
    *, email: str, hours: int, reason: str, requested_by: User, via: dict[str, str] | None = None
) -> tuple[BreakGlassGrant, ApprovalRequest, str]:
    """Files a break-glass grant for the staff account `email`, for `hours` (1 to
    MARKETPLACE_BREAKGLASS_MAX_HOURS) from its approval. Answers the grant, its approval request
    and the password, which is not kept (only its hash) and cannot be shown again.

    Raises InvalidInput (no such account, not active staff, hours out of range) or what
    approval_request refuses; nothing is written then."""
    limit = settings.BREAKGLASS_MAX_HOURS
    if isinstance(hours, bool) or not isinstance(hours, int) or not 1 <= hours <= limit:
        raise InvalidInput(
            f"A break-glass grant lasts 1 to {limit} hour(s) (MARKETPLACE_BREAKGLASS_MAX_HOURS); "
            f"not {hours!r}.",
            errors={"hours": [f"1 to {limit}."]},
        )
    user = User.objects.filter(email__iexact=email.strip()).first()
    if user is None:
        raise InvalidInput(f"There is no account {email!r}.")
    if not (user.is_staff and user.is_active):
        raise InvalidInput(
            f"{user.email} is not an active staff account: break-glass is for staff."
        )
    password = secrets.token_urlsafe(24)
    grant = BreakGlassGrant.objects.create(
        user=user,
        requested_by=requested_by,
        reason=reason.strip(),
        hours=hours,
        password_hash=make_password(password),
    )
    request = approval_request(
        kind=KIND,
        params={"grant": grant.pk, "user": str(user.uuid), "hours": hours},
        reason=reason,
        requested_by=requested_by,
        via=via,
    )
    grant.approval = request
    grant.save(update_fields=["approval"])
    grant.refresh_from_db()  # a threshold of 1 applied it already
    return grant, request, password


def _grant(params: dict[str, Any]) -> BreakGlassGrant:
    try:
        grant = (
            BreakGlassGrant.objects.select_related("user").filter(pk=params.get("grant")).first()
        )
    except (ValueError, TypeError):
        grant = None
    if grant is None:
        raise InvalidInput(f"There is no break-glass grant {params.get('grant')}.")
    return grant


def breakglass_beneficiary(params: dict[str, Any]) -> int:
    """The account that signs in with the grant (it may not approve its own)."""
    return _grant(params).user_id


def breakglass_check(params: dict[str, Any]) -> None:
    grant = _grant(params)
    if grant.revoked_at is not None or grant.active_from is not None:
        raise InvalidInput(f"Break-glass grant {grant.pk} is revoked or active already.")


def breakglass_summary(params: dict[str, Any]) -> str:
    grant = _grant(params)
    return (
        f"Let {grant.user.email} sign in with a break-glass password for {grant.hours} hour(s) "
        "from the moment this is approved (the requester was shown the password once); "
        "every use is recorded, and the grant can be revoked at once in the admin."
    )


@transaction.atomic
def breakglass_activate(*, params: dict[str, Any], actor: Actor) -> dict[str, Any]:
    """Applies an approved `breakglass.grant`: its window starts now. Records
    `breakglass.granted`. Refused (Conflict) for a grant revoked or started already."""
    grant = BreakGlassGrant.objects.select_for_update().get(pk=_grant(params).pk)
    if grant.revoked_at is not None:
        raise Conflict(f"Break-glass grant {grant.pk} was revoked before it was approved.")
    if grant.active_from is not None:
        raise Conflict(f"Break-glass grant {grant.pk} is active already.")
    grant.active_from = timezone.now()
    grant.active_until = grant.active_from + timedelta(hours=grant.hours)
    grant.save(update_fields=["active_from", "active_until"])
    data = {
        "user": str(grant.user.uuid),
        "hours": grant.hours,
        "active_until": format_time(grant.active_until),
    }
    audit_append(actor=actor, action="breakglass.granted", subject=_subject(grant), data=data)
    return {"grant": grant.pk, **data}


@transaction.atomic
def breakglass_revoke(*, grant_pk: int, actor: Actor) -> bool:
    """Revokes a grant at once (approved or not); answers False, recording nothing, when it was
    revoked already. Records `breakglass.revoked`. A session opened with it ends at its next
    request (BreakGlassBackend.get_user)."""
    grant = BreakGlassGrant.objects.select_for_update().select_related("user").get(pk=grant_pk)
    if grant.revoked_at is not None:
        return False
    grant.revoked_at = timezone.now()
    grant.save(update_fields=["revoked_at"])
    audit_append(
        actor=actor,
        action="breakglass.revoked",
        subject=_subject(grant),
        data={"user": str(grant.user.uuid), "uses": grant.uses},
    )
    return True


@transaction.atomic
def breakglass_use(*, grant_pk: int, client_ip: str | None) -> bool:
    """Counts one sign-in with the grant and records `breakglass.used` (the account as actor,
    with the client address), if the grant is still active once locked; answers whether it
    was."""
    grant = BreakGlassGrant.objects.select_for_update().select_related("user").get(pk=grant_pk)
    now = timezone.now()
    if not grant.is_active_at(now):
        return False
    grant.uses += 1
    grant.last_used_at = now
    grant.save(update_fields=["uses", "last_used_at"])
    audit_append(
        actor=Actor.of_user(grant.user),
        action="breakglass.used",
        subject=_subject(grant),
        data={
            "grant": grant.pk,
            "user": str(grant.user.uuid),
            "client_ip": client_ip,
            "uses": grant.uses,
        },
    )
    return True
