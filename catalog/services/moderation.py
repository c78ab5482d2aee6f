"""Moderation: verdicts of the backend on a SKU's artifact, manifest and listing, and the
decisions of moderators on them (docs/moderation.md).

The backend reads storage and may call an outside service, so it runs outside any transaction;
its verdicts are then recorded under the SKU's lock, with their audit events. A verdict is on
content, named by its fingerprint: the same bytes or text uploaded again keep their verdict,
and anything new waits for its own.
"""

from typing import Any

from django.db import transaction
from django.utils import timezone

from audit.services import audit_append
from catalog.cache import catalog_changed
from catalog.exceptions import ModerationDecisionRefused, ModerationNotAllowed
from catalog.models import (
    ModerationReview,
    ModerationState,
    Sku,
    SkuStatus,
)
from catalog.moderation.backends import Verdict, get_backend
from catalog.moderation.items import CurrentItem, sku_moderation_items
from catalog.moderation.rules import BLOCK, FLAG
from catalog.selectors import moderation_reviewed_keys, sku_unmoderated_items
from catalog.services.locks import sku_lock
from catalog.services.status import sku_status_change
from marketplace.actors import Actor, ActorType
from marketplace.models import User
from marketplace.roles import MODERATOR, has_role

DECISION_REASON_MAX = 500


def user_of(actor: Actor) -> User | None:
    """The staff user an actor stands for; None for a service or the system."""
    if actor.type != ActorType.STAFF:
        return None
    return User.objects.filter(uuid=actor.id).first()


def sku_moderation_enqueue(*, sku_id: int, actor: Actor) -> None:
    """Once the caller's transaction commits, a worker asks moderation about what of the SKU
    is new (catalog.tasks.sku_moderate); `actor`, when staff, is the submitter. A broker
    outage is logged; activation asks about whatever still has no verdict."""
    from catalog.tasks import sku_moderate as sku_moderate_task

    submitter = actor.id if actor.type == ActorType.STAFF else None
    transaction.on_commit(lambda: sku_moderate_task.delay(sku_id, submitter), robust=True)


_STATE_OF_OUTCOME = {
    "pass": ModerationState.PASSED,
    FLAG: ModerationState.FLAGGED,
    BLOCK: ModerationState.BLOCKED,
}


def sku_moderate(
    *, sku_id: int, actor: Actor, submitted_by_id: int | None = None
) -> list[ModerationReview]:
    """Asks the backend about every item of the SKU without a verdict on its current content,
    and records each verdict. Returns the reviews made (none when every item has one).

    Runs the backend outside any transaction; raises ModerationUnavailable (and records
    nothing) when it gives no verdict. Records `sku.moderation_reviewed` per review and, when a
    block lands on a SKU on sale, `sku.suspended`. `submitted_by_id` is the user whose change
    is reviewed (an artifact's is its uploader); they may not decide on it.
    """
    sku = Sku.objects.select_related("partner", "category", "artifact").get(pk=sku_id)
    pending = sku_unmoderated_items(sku)
    if not pending:
        return []
    backend = get_backend()
    verdicts = [(current, backend.moderate(current.item)) for current in pending]

    with transaction.atomic():
        sku = sku_lock(sku_id)
        now_items = {
            (current.item.subject, current.fingerprint) for current in sku_moderation_items(sku)
        }
        reviewed = moderation_reviewed_keys(sku, [current for current, _ in verdicts])
        made = [
            _review_record(sku, current, verdict, actor=actor, submitted_by_id=submitted_by_id)
            for current, verdict in verdicts
            # Changed since it was asked about, or recorded meanwhile by another run.
            if (key := (current.item.subject, current.fingerprint)) in now_items
            and key not in reviewed
        ]
        blocked = [review for review in made if review.state == ModerationState.BLOCKED]
        if blocked and sku.status == SkuStatus.ACTIVE:
            codes = ", ".join(blocked[0].reason_codes())
            _take_off_sale(sku, blocked[0], actor=actor, why=f"blocked by moderation: {codes}")
        if made:
            catalog_changed(sku)
    return made


def _review_record(
    sku: Sku,
    current: CurrentItem,
    verdict: Verdict,
    *,
    actor: Actor,
    submitted_by_id: int | None,
) -> ModerationReview:
    if current.artifact is not None and current.artifact.uploaded_by_id is not None:
        submitted_by_id = current.artifact.uploaded_by_id
    review = ModerationReview.objects.create(
        sku=sku,
        subject=current.item.subject,
        fingerprint=current.fingerprint,
        artifact=current.artifact,
        sku_version=sku.version,
        backend=verdict.backend,
        outcome=verdict.outcome,
        reasons=[reason.as_json() for reason in verdict.reasons],
        state=_STATE_OF_OUTCOME[verdict.outcome],
        submitted_by_id=submitted_by_id,
    )
    audit_append(
        actor=actor,
        action="sku.moderation_reviewed",
        subject=sku,
        data={
            "review_id": review.pk,
            "subject": review.subject,
            "fingerprint": review.fingerprint,
            "backend": review.backend,
            "outcome": review.outcome,
            "reasons": review.reason_codes(),
        },
    )
    return review


def _take_off_sale(sku: Sku, review: ModerationReview, *, actor: Actor, why: str) -> None:
    """Precondition: the caller holds the SKU's lock. Records `sku.suspended`."""
    fields = sku_status_change(
        sku,
        target=SkuStatus.SUSPENDED,
        reason=f"{review.subject} {why}",
        actor=actor,
        at=timezone.now(),
    )
    sku.save(update_fields=[*fields, "updated_at"])


class Decision:
    APPROVE = "approve"
    REJECT = "reject"
    OVERRIDE = "override"


# Which states each decision applies to, and the state it leaves.
DECISIONS: dict[str, tuple[frozenset[str], ModerationState]] = {
    Decision.APPROVE: (frozenset({ModerationState.FLAGGED}), ModerationState.APPROVED),
    Decision.REJECT: (
        frozenset({ModerationState.FLAGGED, ModerationState.PASSED}),
        ModerationState.REJECTED,
    ),
    Decision.OVERRIDE: (
        frozenset({ModerationState.BLOCKED, ModerationState.REJECTED}),
        ModerationState.OVERRIDDEN,
    ),
}


def moderation_decide_check(*, review: ModerationReview, decision: str, user: User) -> None:
    """Raises what moderation_decide would refuse, without writing: ModerationNotAllowed for
    someone who is not a Moderator or who submitted the item, ModerationDecisionRefused for a
    decision the review's state does not take."""
    if not has_role(user, MODERATOR):
        raise ModerationNotAllowed("Only a member of the Moderator role decides on reviews.")
    if review.submitted_by_id is not None and review.submitted_by_id == user.pk:
        raise ModerationNotAllowed("You submitted this item; another moderator has to review it.")
    if decision not in DECISIONS:
        raise ModerationDecisionRefused(
            f"{decision!r} is not a decision; approve, reject or override."
        )
    states, _ = DECISIONS[decision]
    if review.state not in states:
        raise ModerationDecisionRefused(
            f"A {review.state} review cannot be {DECISIONS[decision][1]}; "
            f"{decision} applies to {' and '.join(sorted(states))} reviews."
        )


@transaction.atomic
def moderation_decide(
    *, review_id: int, decision: str, reason: str, user: User
) -> ModerationReview:
    """A moderator approves a flagged item, rejects a flagged or passed one, or overrides a
    block or a rejection, always with a reason.

    Raises ModerationNotAllowed or ModerationDecisionRefused (moderation_decide_check), or
    ModerationDecisionRefused without a reason; nothing is written then. Records
    `sku.moderation_decided` (what the partner is told: moderation_decided_notice) and, when a
    rejection lands on a SKU on sale, `sku.suspended`.
    """
    reason = reason.strip()[:DECISION_REASON_MAX]
    review = ModerationReview.objects.select_related("sku").get(pk=review_id)
    sku = sku_lock(review.sku_id)  # the SKU first, then its review: the services' lock order
    review = ModerationReview.objects.select_for_update(of=("self",)).get(pk=review_id)
    moderation_decide_check(review=review, decision=decision, user=user)
    if not reason:
        raise ModerationDecisionRefused("Give the reason for the decision: the partner is told it.")
    previous = review.state
    review.state = DECISIONS[decision][1]
    review.decided_by = user
    review.decision_reason = reason
    review.decided_at = timezone.now()
    review.save(update_fields=["state", "decided_by", "decision_reason", "decided_at"])
    actor = Actor.of_user(user)
    moderation_decided_notice(sku, review, previous=previous, actor=actor)
    if review.state == ModerationState.REJECTED and sku.status == SkuStatus.ACTIVE:
        _take_off_sale(
            sku, review, actor=actor, why=f"rejected by a moderator: {review.decision_reason}"
        )
    catalog_changed(sku)
    return review


def moderation_decided_payload(
    sku: Sku, review: ModerationReview, *, previous: str
) -> dict[str, Any]:
    """What the SKU's partner is told of a decision: the body of the `moderation.decided`
    partner webhook event."""
    return {
        "sku": sku.slug,
        "partner": sku.partner.slug,
        "version": review.sku_version,
        "review_id": review.pk,
        "subject": review.subject,
        "fingerprint": review.fingerprint,
        "decision": review.state,
        "previous": previous,
        "reason": review.decision_reason,
        "rules": review.reason_codes(),
    }


def moderation_decided_notice(
    sku: Sku, review: ModerationReview, *, previous: str, actor: Actor
) -> dict[str, Any]:
    """Records the decision with what the partner is told, in the decision's transaction.

    This is where the partner is told: the `moderation.decided` webhook (orders' partner
    webhooks, issue 15 item 5) sends `moderation_decided_payload`. The catalog cannot import
    orders (DESIGN's layering), so the webhook's outbox row is written from the event recorded
    here, or this function is given the call when the webhooks land.
    """
    payload = moderation_decided_payload(sku, review, previous=previous)
    audit_append(actor=actor, action="sku.moderation_decided", subject=sku, data=payload)
    return payload
