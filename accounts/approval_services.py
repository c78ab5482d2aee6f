"""Two-person approval: filing a request, approving, rejecting, expiring, and applying it once.

The threshold (MARKETPLACE_APPROVAL_THRESHOLD, snapshotted on the request) counts people in all:
the requester plus threshold - 1 approvers, each a different active staff member holding a role
of the kind (accounts.approvals). The requester never approves their own request (they may
withdraw it by rejecting it), nor does the person the change is for (the kind's beneficiary: the
account a grant is for). One rejection closes a request. When the request applies, the requester
and every approver must still be active staff in a role of the kind; otherwise it fails.

Every decision takes the request's row lock and re-reads it first, so two approvals arriving
together are serialised: the one that reaches the threshold applies the change, in the same
transaction as its decision, and the other then finds the request applied and is refused. A
kind with outside effects (a refund) is marked `applying` in that transaction instead and made
once it commits, outside any transaction; a second decision finds it applying and is refused. A
refusal raises an ApprovalRefused (or InvalidInput) and writes nothing.

Audit events, each with the staff member (or the system, for expiry) as the actor and the request
as the subject: `approval.requested`, `approval.approved`, `approval.rejected`,
`approval.expired`, `approval.applied`, `approval.failed`. The change applied writes its own
events too, with the approver whose decision applied it as their actor.
"""

import getpass
import logging
import socket
from datetime import timedelta
from typing import Any
from uuid import UUID

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from accounts.approvals import (
    ApprovalAlreadyDecided,
    ApprovalBeneficiary,
    ApprovalClosed,
    ApprovalExpired,
    ApprovalOwnRequest,
    ApprovalRoleMissing,
    kind_get,
)
from accounts.models import ApprovalDecision, ApprovalDecisionKind, ApprovalRequest, ApprovalStatus
from audit.chain import format_time
from audit.services import audit_append
from marketplace.actors import Actor
from marketplace.canonical import canonical_check
from marketplace.exceptions import InvalidInput, NotFound
from marketplace.models import User
from marketplace.roles import has_role

logger = logging.getLogger(__name__)

REASON_MAX = 1000
EXPIRER = Actor.system("approvals_expire")


def _subject(request: ApprovalRequest) -> tuple[str, str]:
    return ("approval", str(request.pk))


def approval_staff(email: str) -> User:
    """The active staff account with this email, as the commands' `--as EMAIL` names the person
    filing or deciding. InvalidInput when there is none."""
    user = User.objects.filter(email__iexact=email.strip()).first()
    if user is None or not (user.is_staff and user.is_active):
        raise InvalidInput(f"{email!r} is not an active staff account.")
    return user


def command_origin() -> dict[str, str]:
    """What the audit data of a step taken through a management command adds: the command's
    `--as EMAIL` is the operator's word, so who ran it (the OS user) and where are kept too."""
    try:
        os_user = getpass.getuser()
    except (OSError, KeyError):  # no login name in the environment nor the password database
        os_user = ""
    return {"via": "command", "os_user": os_user, "host": socket.gethostname()}


def approval_next_step(request: ApprovalRequest) -> str:
    """What happens next with a request just filed, in words (the admin and the commands say
    it)."""
    if request.status == ApprovalStatus.PENDING:
        return (
            f"Request {request.pk} is filed: nothing changes until "
            f"{request.approvals_needed} other staff member(s) in the role "
            f"{' or '.join(kind_get(request.kind).roles)} approve it, before "
            f"{format_time(request.expires_at)} (the admin's Pending approvals, or "
            f"`approvals approve {request.pk} --as EMAIL`)."
        )
    if request.status == ApprovalStatus.APPLIED:
        return f"Request {request.pk} was applied at once (threshold {request.threshold})."
    return f"Request {request.pk} is {request.status}: {request.error}"


def _staff_check(user: User, kind: str, roles: tuple[str, ...], *, doing: str) -> None:
    if not has_role(user, *roles):
        raise ApprovalRoleMissing(
            f"{user.email} may not {doing} a {kind} request: it takes an active staff member "
            f"in the role {' or '.join(roles)}."
        )


def approval_request(
    *,
    kind: str,
    params: dict[str, Any],
    reason: str,
    requested_by: User,
    via: dict[str, str] | None = None,
) -> ApprovalRequest:
    """Files a request for `kind` with `params`, on behalf of `requested_by` (who must hold a
    role of the kind: the requester is the first of the threshold's people). The kind's check
    runs now, so a change that could never be applied is refused before anyone is asked.

    Records `approval.requested`. With a threshold of 1 (dev only) the request applies at once
    (a kind with outside effects after the request is committed: call this outside any
    transaction then). Raises InvalidInput (unknown kind, no reason, a refused check) or
    ApprovalRoleMissing; nothing is written then. `via` (command_origin) is added to the
    audit data of a request filed through a command."""
    request, outside = _request_file(
        kind=kind, params=params, reason=reason, requested_by=requested_by, via=via
    )
    if outside:
        request = _apply_outside(request, Actor.of_user(requested_by))
    return request


@transaction.atomic
def _request_file(
    *,
    kind: str,
    params: dict[str, Any],
    reason: str,
    requested_by: User,
    via: dict[str, str] | None,
) -> tuple[ApprovalRequest, bool]:
    spec = kind_get(kind)
    reason = reason.strip()
    if not reason:
        raise InvalidInput(
            "Say why the change is needed: the reason is shown to the approvers and kept.",
            errors={"reason": ["A reason is required."]},
        )
    if len(reason) > REASON_MAX:
        raise InvalidInput(
            f"The reason takes at most {REASON_MAX} characters.",
            errors={"reason": [f"At most {REASON_MAX} characters."]},
        )
    _staff_check(requested_by, kind, spec.roles, doing="file")
    try:
        canonical_check(params)
    except ValueError as exc:
        raise InvalidInput(f"The request's parameters are not plain JSON: {exc}") from exc
    if spec.check is not None:
        spec.check(params)
    now = timezone.now()
    threshold = settings.APPROVAL_THRESHOLD
    request = ApprovalRequest.objects.create(
        kind=kind,
        params=params,
        summary=spec.summary(params),
        reason=reason,
        requested_by=requested_by,
        requested_at=now,
        expires_at=now + timedelta(hours=settings.APPROVAL_TTL_HOURS),
        threshold=threshold,
    )
    actor = Actor.of_user(requested_by)
    # The summary stays out of the log, which can never be edited: it may name people by
    # email. The params name them by uuid.
    audit_append(
        actor=actor,
        action="approval.requested",
        subject=_subject(request),
        data={
            "kind": kind,
            "params": params,
            "reason": reason,
            "threshold": threshold,
            "expires_at": format_time(request.expires_at),
            **(via or {}),
        },
    )
    outside = request.approvals_needed == 0 and _apply(request, actor)
    return request, outside


def _locked(request_id: UUID | str) -> ApprovalRequest:
    try:
        return (
            ApprovalRequest.objects.select_for_update(of=("self",))
            .select_related("requested_by")
            .get(pk=request_id)
        )
    except (ApprovalRequest.DoesNotExist, ValidationError, ValueError, TypeError):
        raise NotFound(f"There is no approval request {request_id}.") from None


def _decidable(request: ApprovalRequest, by: User, *, doing: str, role: bool = True) -> None:
    """Refuses a decision on a request that is no longer open or that `by` may not take
    (`role`: whether `by` must hold a role of the kind). Caller holds the request's lock."""
    if request.status != ApprovalStatus.PENDING:
        raise ApprovalClosed(
            f"Request {request.pk} is {request.get_status_display().lower()}: "
            "there is nothing left to decide."
        )
    if request.is_expired_at(timezone.now()):
        raise ApprovalExpired(
            f"Request {request.pk} expired at {format_time(request.expires_at)}: "
            "file a new request if the change is still needed."
        )
    if request.decisions.filter(by=by).exists():
        raise ApprovalAlreadyDecided(f"{by.email} has already decided request {request.pk}.")
    if role:
        _staff_check(by, request.kind, kind_get(request.kind).roles, doing=doing)


def approval_approve(
    request_id: UUID | str, *, by: User, note: str = "", via: dict[str, str] | None = None
) -> ApprovalRequest:
    """`by` approves the request; the approval that completes the threshold applies it (once:
    under the request's lock, with `applied_at`). Records `approval.approved`, then
    `approval.applied` or `approval.failed` (the failure's error kept on the request).

    Refused, with nothing written: the requester's own request (ApprovalOwnRequest), one whose
    change is for the approver (ApprovalBeneficiary), someone without the role
    (ApprovalRoleMissing), after expiry (ApprovalExpired), a second decision by the same person
    (ApprovalAlreadyDecided), a request no longer pending (ApprovalClosed).
    """
    outside = False
    with transaction.atomic():
        request = _locked(request_id)
        _decidable(request, by, doing="approve")
        if by.pk == request.requested_by_id:
            raise ApprovalOwnRequest(
                f"{by.email} filed request {request.pk} and cannot approve it: another "
                "staff member must."
            )
        beneficiary = kind_get(request.kind).beneficiary
        if beneficiary is not None and beneficiary(request.params) == by.pk:
            raise ApprovalBeneficiary(
                f"Request {request.pk} changes the access of {by.email}, who cannot approve it: "
                "another staff member must."
            )
        ApprovalDecision.objects.create(
            request=request, by=by, decision=ApprovalDecisionKind.APPROVE, note=note.strip()
        )
        approvals = request.decisions.filter(decision=ApprovalDecisionKind.APPROVE).count()
        actor = Actor.of_user(by)
        audit_append(
            actor=actor,
            action="approval.approved",
            subject=_subject(request),
            data={
                "kind": request.kind,
                "approvals": approvals,
                "needed": request.approvals_needed,
                "note": note.strip(),
                **(via or {}),
            },
        )
        if approvals >= request.approvals_needed:
            outside = _apply(request, actor)
    if outside:
        request = _apply_outside(request, actor)
    return request


def _entitlement_lost(request: ApprovalRequest, roles: tuple[str, ...]) -> str | None:
    """Why the people counted for the request no longer make it (one of them is no longer
    active staff in a role of the kind), or None. Read again now, not as they were when they
    decided."""
    people = [User.objects.get(pk=request.requested_by_id)] + [
        decision.by
        for decision in request.decisions.filter(
            decision=ApprovalDecisionKind.APPROVE
        ).select_related("by")
    ]
    for person in people:
        if not has_role(person, *roles):
            who = "requester" if person.pk == request.requested_by_id else "approver"
            return (
                f"The {who} {person.email} is no longer active staff in the role "
                f"{' or '.join(roles)}: nothing was applied; file a new request if the change "
                "is still needed."
            )
    return None


def _failed(request: ApprovalRequest, actor: Actor, error: str) -> None:
    """Marks the request failed with `error` and records `approval.failed`, in the caller's
    transaction (which holds the request's lock)."""
    request.status = ApprovalStatus.FAILED
    request.error = error
    request.save(update_fields=["status", "error"])
    audit_append(
        actor=actor,
        action="approval.failed",
        subject=_subject(request),
        data={"kind": request.kind, "error": request.error[:500]},
    )


def _apply(request: ApprovalRequest, actor: Actor) -> bool:
    """Applies an approved request. Caller holds the request's lock in its transaction, so this
    runs once per request. The kind's change runs in a savepoint: if it raises, its writes are
    undone and the request is marked failed with the error (the decisions stay).

    A kind with outside effects (`outside`) is only marked `applying` here, and this answers
    True: the caller commits, then calls _apply_outside. Answers False otherwise."""
    spec = kind_get(request.kind)
    if (lost := _entitlement_lost(request, spec.roles)) is not None:
        _failed(request, actor, lost)
        return False
    if spec.outside:
        # Committed before the change is made: a second approver finds it taken (closed).
        request.status = ApprovalStatus.APPLYING
        request.save(update_fields=["status"])
        return True
    try:
        with transaction.atomic():
            outcome = spec.apply(request.params, actor) or {}
    except Exception as exc:  # recorded on the request and in the log, not retried
        logger.exception("approval %s (%s) failed to apply", request.pk, request.kind)
        _failed(request, actor, _error_of(exc))
        return False
    _applied(request, actor, outcome)
    return False


def _error_of(exc: Exception) -> str:
    return getattr(exc, "detail", None) or f"{type(exc).__name__}: {exc}"


def _applied(request: ApprovalRequest, actor: Actor, outcome: dict[str, Any]) -> None:
    request.status = ApprovalStatus.APPLIED
    request.applied_at = timezone.now()
    request.outcome = outcome
    request.save(update_fields=["status", "applied_at", "outcome"])
    audit_append(
        actor=actor,
        action="approval.applied",
        subject=_subject(request),
        data={"kind": request.kind, "outcome": outcome},
    )


def _apply_outside(request: ApprovalRequest, actor: Actor) -> ApprovalRequest:
    """Makes the change of a request marked `applying` (committed: no other decision can take
    it), outside any transaction, as a change reaching the payment provider must be; then
    records it applied or failed under the request's lock, in a short transaction of its own.
    What the change wrote before failing stays (a refund has no undo); the kind makes sending
    it again harmless (the refund's idempotency key). A process stopped in between leaves the
    request `applying`, for someone to look at."""
    spec = kind_get(request.kind)
    try:
        outcome, error = spec.apply(request.params, actor) or {}, ""
    except Exception as exc:  # recorded on the request and in the log, not retried
        logger.exception("approval %s (%s) failed to apply", request.pk, request.kind)
        outcome, error = {}, _error_of(exc)
    with transaction.atomic():
        request = _locked(request.pk)
        if request.status != ApprovalStatus.APPLYING:  # nothing else moves it: keep it as is
            logger.error("approval %s left applying as %s", request.pk, request.status)
            return request
        if error:
            _failed(request, actor, error)
        else:
            _applied(request, actor, outcome)
    return request


@transaction.atomic
def approval_reject(
    request_id: UUID | str, *, by: User, reason: str, via: dict[str, str] | None = None
) -> ApprovalRequest:
    """`by` rejects the request, which closes it; the requester may reject (withdraw) their
    own. Records `approval.rejected` with the reason. Refused like approval_approve (the
    requester aside), and without a reason (InvalidInput); nothing is written then."""
    reason = reason.strip()
    if not reason:
        raise InvalidInput(
            "Say why the request is rejected.", errors={"reason": ["A reason is required."]}
        )
    request = _locked(request_id)
    # Withdrawing one's own request needs no role beyond the one it was filed with.
    _decidable(request, by, doing="reject", role=by.pk != request.requested_by_id)
    ApprovalDecision.objects.create(
        request=request, by=by, decision=ApprovalDecisionKind.REJECT, note=reason[:REASON_MAX]
    )
    request.status = ApprovalStatus.REJECTED
    request.save(update_fields=["status"])
    audit_append(
        actor=Actor.of_user(by),
        action="approval.rejected",
        subject=_subject(request),
        data={
            "kind": request.kind,
            "reason": reason[:REASON_MAX],
            "withdrawn": by.pk == request.requested_by_id,
            **(via or {}),
        },
    )
    return request


def approvals_expire() -> int:
    """Marks every pending request past its expiry expired, each in its own transaction under
    its lock (a decision taken meanwhile wins). Records `approval.expired` (actor: the
    system). Answers how many expired; safe to run twice."""
    now = timezone.now()
    expired = 0
    for pk in ApprovalRequest.objects.expired_at(now).order_by("pk").values_list("pk", flat=True):
        with transaction.atomic():
            request = _locked(pk)
            if request.status != ApprovalStatus.PENDING or not request.is_expired_at(now):
                continue
            request.status = ApprovalStatus.EXPIRED
            request.save(update_fields=["status"])
            audit_append(
                actor=EXPIRER,
                action="approval.expired",
                subject=_subject(request),
                data={"kind": request.kind, "expires_at": format_time(request.expires_at)},
            )
            expired += 1
    return expired
