"""The signing-key changes that wait for a second person of Security (accounts.approvals):
`signing_key.rotate` (params: purpose) and `signing_key.revoke` (params: kid, reason). Applying
one calls the audited key-store services in audit.signing_keys, which stay where they are."""

from typing import Any

from accounts import approvals
from audit.signing_keys import signing_key_revoke, signing_key_rotate
from marketplace.actors import Actor
from marketplace.exceptions import InvalidInput
from marketplace.models import SigningKey, SigningKeyPurpose, SigningKeyStatus
from marketplace.roles import SECURITY

ROTATE = "signing_key.rotate"
REVOKE = "signing_key.revoke"
REVOKE_REASON_MAX = 500


def _purpose(params: dict[str, Any]) -> SigningKeyPurpose:
    try:
        return SigningKeyPurpose(params.get("purpose"))
    except ValueError:
        raise InvalidInput(
            f"{params.get('purpose')!r} is not a signing-key purpose "
            f"({', '.join(SigningKeyPurpose.values)})."
        ) from None


def rotate_check(params: dict[str, Any]) -> None:
    _purpose(params)


def rotate_summary(params: dict[str, Any]) -> str:
    purpose = _purpose(params)
    active = SigningKey.objects.filter(purpose=purpose, status=SigningKeyStatus.ACTIVE).first()
    retired = (
        f"{active.kid} is retired (it still verifies what it signed)"
        if active
        else "there is no active key to retire"
    )
    return f"Rotate the {purpose} signing key: a new active key is made and {retired}."


def rotate_apply(params: dict[str, Any], actor: Actor) -> dict[str, Any]:
    new, previous = signing_key_rotate(purpose=_purpose(params), actor=actor)
    return {"new": new.kid, "retired": previous.kid if previous else None}


def _key_and_reason(params: dict[str, Any]) -> tuple[SigningKey, str]:
    kid, reason = params.get("kid"), (params.get("reason") or "").strip()
    key = SigningKey.objects.filter(kid=kid).first()
    if key is None:
        raise InvalidInput(f"No signing key has the kid {kid!r}.")
    if not reason:
        raise InvalidInput("Say why the key is revoked (kept in the audit log).")
    if len(reason) > REVOKE_REASON_MAX:
        raise InvalidInput(f"The reason takes at most {REVOKE_REASON_MAX} characters.")
    return key, reason


def revoke_check(params: dict[str, Any]) -> None:
    key, _ = _key_and_reason(params)
    if key.status == SigningKeyStatus.REVOKED:
        raise InvalidInput(f"{key.kid} is revoked already.")


def revoke_summary(params: dict[str, Any]) -> str:
    key, reason = _key_and_reason(params)
    return (
        f"Revoke the {key.purpose} signing key {key.kid} ({key.status}, {key.backend}): what it "
        f"signed no longer verifies and it leaves the JWK Set. Reason: {reason}"
    )


def revoke_apply(params: dict[str, Any], actor: Actor) -> dict[str, Any]:
    _, reason = _key_and_reason(params)
    key = signing_key_revoke(kid=params["kid"], reason=reason, actor=actor)
    return {"kid": key.kid, "status": key.status}


def register_approval_kinds() -> None:
    approvals.register(
        ROTATE, roles=(SECURITY,), summary=rotate_summary, apply=rotate_apply, check=rotate_check
    )
    approvals.register(
        REVOKE, roles=(SECURITY,), summary=revoke_summary, apply=revoke_apply, check=revoke_check
    )
