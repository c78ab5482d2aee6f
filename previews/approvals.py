"""The preview change that waits for a second person of Security (accounts.approvals):
`previews.isolate_all` (params: reason, pause), "Isolate pool" for every SKU at once. Isolating
one SKU is the same service called directly (the admin's Isolate pool page, `previews_revoke
--sku`): it touches one partner's previews, this one every buyer's."""

from typing import Any

from accounts import approvals
from marketplace.actors import Actor, ActorType
from marketplace.exceptions import InvalidInput
from marketplace.models import User
from marketplace.roles import SECURITY
from previews.models import PreviewSession
from previews.services import previews_isolate
from previews.services.upkeep import REASON_MAX

ISOLATE_ALL = "previews.isolate_all"


def _reason_and_pause(params: dict[str, Any]) -> tuple[str, bool]:
    reason, pause = params.get("reason"), params.get("pause", True)
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidInput("Say why the preview pool is isolated (kept in the audit log).")
    if len(reason.strip()) > REASON_MAX:
        raise InvalidInput(f"The reason takes at most {REASON_MAX} characters.")
    if not isinstance(pause, bool):
        raise InvalidInput("`pause` is true or false.")
    return reason.strip(), pause


def isolate_all_check(params: dict[str, Any]) -> None:
    _reason_and_pause(params)


def isolate_all_summary(params: dict[str, Any]) -> str:
    reason, pause = _reason_and_pause(params)
    # The count is of when the request was filed; applying revokes what is open then.
    open_now = PreviewSession.objects.open().count()
    then = (
        "new previews are refused until the pause is lifted (Lift on the Preview pauses page)"
        if pause
        else "new previews are still taken"
    )
    return (
        f"Isolate the preview pool: revoke every open preview session of every SKU "
        f"({open_now} open now), and {then}. Reason: {reason}"
    )


def _user_of(actor: Actor) -> User | None:
    if actor.type != ActorType.STAFF:
        return None
    return User.objects.filter(uuid=actor.id).first()


def isolate_all_apply(params: dict[str, Any], actor: Actor) -> dict[str, Any]:
    reason, pause = _reason_and_pause(params)
    # The approver whose decision applies it is the actor, and the pause is theirs.
    done = previews_isolate(
        sku_id=None, reason=reason, actor=actor, pause=pause, by=_user_of(actor)
    )
    return {"revoked": done.revoked, "pause": done.pause.pk if done.pause else None}


def register_approval_kinds() -> None:
    approvals.register(
        ISOLATE_ALL,
        roles=(SECURITY,),
        summary=isolate_all_summary,
        apply=isolate_all_apply,
        check=isolate_all_check,
    )
