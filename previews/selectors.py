"""Reads of previews."""

import hashlib
import re
from typing import Any

from django.utils import timezone

from catalog.models import Sku
from marketplace.models import User
from previews.exceptions import PreviewGone, PreviewNotFound, PreviewStarting
from previews.models import EndReason, PreviewMaterial, PreviewSession, SessionStatus

# secrets.token_urlsafe(32): 43 characters of the URL-safe base64 alphabet.
TOKEN_FORMAT = re.compile(r"[A-Za-z0-9_-]{43}")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def material_current(sku: Sku) -> PreviewMaterial | None:
    """The SKU's current preview material: its newest version not withdrawn."""
    return (
        PreviewMaterial.objects.filter(sku=sku, withdrawn_at__isnull=True)
        .order_by("-version")
        .first()
    )


def preview_get_for_buyer(*, buyer: User, session_id: Any) -> PreviewSession:
    """The buyer's own session; another buyer's, like one that does not exist, is
    PreviewNotFound."""
    session = (
        PreviewSession.objects.select_related("sku", "material")
        .filter(pk=session_id, buyer=buyer)
        .first()
    )
    if session is None:
        raise PreviewNotFound(f"You have no preview {session_id}.")
    return session


GONE_DETAIL = {
    EndReason.EXPIRED: "The preview has expired.",
    EndReason.ENDED: "The preview was ended.",
    EndReason.REVOKED: "The preview was revoked.",
    EndReason.FAILED: "The preview's sandbox failed.",
    EndReason.ROTATED: "The preview was replaced by newer preview material.",
}


def preview_by_token(token: str) -> PreviewSession:
    """The session a preview URL's token opens, ready and unexpired. PreviewNotFound for a
    malformed or unknown token, PreviewGone (with its reason) for an ended or expired one,
    PreviewStarting while its sandbox starts."""
    if not TOKEN_FORMAT.fullmatch(token):
        raise PreviewNotFound("There is no such preview.")
    session = (
        PreviewSession.objects.select_related("material")
        .filter(token_hash=token_hash(token))
        .first()
    )
    if session is None:
        raise PreviewNotFound("There is no such preview.")
    if not session.is_open():
        reason = session.end_reason
        raise PreviewGone(GONE_DETAIL.get(reason, "The preview has ended."), reason=reason)
    if session.is_expired_at(timezone.now()):
        raise PreviewGone(GONE_DETAIL[EndReason.EXPIRED], reason=EndReason.EXPIRED)
    if session.status != SessionStatus.READY:
        raise PreviewStarting("The preview is still starting; try again in a moment.")
    return session
