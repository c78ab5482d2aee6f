"""The audited lifecycle of the platform's signing keys: made on first use, rotated, revoked.

The key store (marketplace.keystore) makes, records and uses keys; every change it makes to a
key is recorded here, in the same transaction, as a `signing_key.*` event. Whoever needs a key
(checkpoints, exports, licenses, proofs) or changes one (the admin, `rotate_signer`,
`revoke_signer`) comes through these functions.
"""

from typing import Any

from django.db import DatabaseError, IntegrityError, transaction

from audit.services import audit_append
from marketplace.actors import Actor
from marketplace.keystore import (
    KeyStoreError,
    PreparedKey,
    key_active,
    key_mark_revoked,
    key_prepare,
    key_retire_active,
)
from marketplace.models import SigningKey, SigningKeyPurpose

KEYSTORE = Actor.system("keystore")


def _key_event(actor: Actor | None, action: str, key: SigningKey, data: dict[str, Any]) -> None:
    audit_append(
        actor=actor or KEYSTORE,
        action=action,
        subject=("signing_key", key.kid),
        data={"purpose": key.purpose, "algorithm": key.algorithm, **data},
    )


def _record(prepared: PreparedKey, actor: Actor | None) -> SigningKey:
    key = prepared.record()
    _key_event(actor, "signing_key.created", key, prepared.description())
    return key


def signing_key_active(*, purpose: SigningKeyPurpose) -> SigningKey:
    """The purpose's active key. When there is none, the purpose's backend makes one (or, for
    licenses on KMS, the configured key is adopted), recorded as `signing_key.created`. Raises
    KeyStoreUnavailable when that backend is out."""
    key = key_active(purpose=purpose)
    if key is not None:
        return key
    prepared = key_prepare(purpose=purpose)
    try:
        with transaction.atomic():
            return _record(prepared, actor=None)
    except IntegrityError:
        # Another process recorded one first (one active key per purpose is a constraint).
        prepared.discard()
        key = key_active(purpose=purpose)
        if key is None:
            raise KeyStoreError(f"no active {purpose} key could be recorded; try again") from None
        return key


def signing_key_rotate(
    *, purpose: SigningKeyPurpose, actor: Actor | None = None
) -> tuple[SigningKey, SigningKey | None]:
    """Makes a new active key in the purpose's backend and retires the previous one, which
    goes on verifying. The backend is called first, outside the transaction; the retirement
    and the new key are recorded together, with their `signing_key.retired` and
    `signing_key.created` events.

    Returns the new key and the retired one (None when there was none)."""
    prepared = key_prepare(purpose=purpose)
    try:
        with transaction.atomic():
            previous = key_retire_active(purpose=purpose)
            if previous is not None:
                _key_event(actor, "signing_key.retired", previous, {})
            key = _record(prepared, actor)
    except DatabaseError:
        prepared.discard()
        raise
    return key, previous


@transaction.atomic
def signing_key_revoke(*, kid: str, reason: str, actor: Actor | None = None) -> SigningKey:
    """Revokes a key: what it signed no longer verifies, and it leaves the JWK Set; recorded
    as `signing_key.revoked` (nothing is recorded for a key revoked already). A revoked active
    key leaves its purpose without one until the next signature creates (or a rotation makes)
    a new key. A remote key is not deleted in its backend: the platform stops using and
    publishing it, and operators disable it there."""
    key, changed = key_mark_revoked(kid=kid, reason=reason)
    if changed:
        _key_event(actor, "signing_key.revoked", key, {"reason": reason})
    return key
