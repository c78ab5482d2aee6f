"""Issuing, verifying, revoking and reissuing licenses."""

import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from audit.services import audit_append
from audit.signing_keys import signing_key_active
from licensing.jws import LICENSE_TOKEN, JwsInvalid, ParsedJws, jws_parse, jws_sign, jws_verify
from licensing.metrics import licenses_issued
from licensing.models import License, LicenseStatus
from marketplace.actors import Actor
from marketplace.exceptions import Conflict, InvalidInput, NotFound
from marketplace.keystore import public_keys_from_store, signer_for
from marketplace.maintenance import maintenance_on
from marketplace.models import SigningKeyPurpose
from orders.locks import order_lock
from orders.models import REVOKING, Order

# A perpetual license's `exp` (9999-12-31T23:59:59Z): every license token carries one, so an
# offline verifier can require it; `expires_at` stays null, which is what says "perpetual".
PERPETUAL_EXP = 253402300799
# Licenses issued before the token kinds were told apart: `typ` "JWT", `iss` "marketplace", no
# `aud`, and no `exp` when perpetual. Verified online only, and only as the very token stored.
LEGACY_TYP = "JWT"
LEGACY_ISSUER = "marketplace"
LICENSE_KEY_PREFIX = "MKP"
# Crockford's base32 without the letters people misread (I, L, O, U).
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# What a person may type between the groups: dashes of any kind, spaces, dots, underscores.
_SEPARATORS = re.compile(r"[\s\-\u2010-\u2015._]+")
# Crockford's decoding of the letters the alphabet leaves out.
_MISREAD = str.maketrans({"O": "0", "I": "1", "L": "1"})


def license_key_generate() -> str:
    """`MKP-XXXXX-XXXXX-XXXXX-XXXXX`: 100 random bits a person can read out and type."""
    chars = "".join(secrets.choice(_ALPHABET) for _ in range(20))
    return f"{LICENSE_KEY_PREFIX}-" + "-".join(chars[i : i + 5] for i in range(0, 20, 5))


def license_key_normalize(text: str) -> str | None:
    """What a person typed, as stored (`MKP-XXXXX-XXXXX-XXXXX-XXXXX`), or None when it cannot
    be a license key. Case, spaces, missing or extra dashes, the `MKP` prefix and Crockford's
    misread letters (O for 0, I and L for 1) are forgiven."""
    cleaned = _SEPARATORS.sub("", text).upper()
    if cleaned.startswith(LICENSE_KEY_PREFIX) and len(cleaned) == 20 + len(LICENSE_KEY_PREFIX):
        cleaned = cleaned[len(LICENSE_KEY_PREFIX) :]
    cleaned = cleaned.translate(_MISREAD)
    if len(cleaned) != 20 or any(char not in _ALPHABET for char in cleaned):
        return None
    return f"{LICENSE_KEY_PREFIX}-" + "-".join(cleaned[i : i + 5] for i in range(0, 20, 5))


def _expiry(order: Order, issued_at: datetime) -> datetime | None:
    days = order.license_duration_days
    return issued_at + timedelta(days=days) if days else None


def license_claims(
    *, license_id: str, order: Order, issued_at: datetime, expires_at: datetime | None
) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": LICENSE_TOKEN.iss,
        "aud": LICENSE_TOKEN.aud,
        "jti": license_id,
        "order": str(order.id),
        "sku": order.sku_slug,
        "sku_version": order.sku_version,
        "sub": str(order.buyer.uuid),
        "iat": int(issued_at.timestamp()),
        "entitlements": list(order.license_entitlements or []),
        "seats": order.license_seats,
        "exp": int(expires_at.timestamp()) if expires_at is not None else PERPETUAL_EXP,
    }
    return claims


def _signed_license(order: Order, *, supersedes: License | None = None) -> License:
    """A new, unsaved license for `order`, signed with the active license key. Signing may
    call KMS or the signing proxy, so it happens before any lock is taken."""
    issued_at = timezone.now().replace(microsecond=0)
    expires_at = _expiry(order, issued_at)
    # A UUID, not its text: the returned row then compares equal to the same row read back.
    license_id = uuid.uuid4()
    signer = signer_for(signing_key_active(purpose=SigningKeyPurpose.LICENSE))
    token = jws_sign(
        license_claims(
            license_id=str(license_id), order=order, issued_at=issued_at, expires_at=expires_at
        ),
        signer,
        kind=LICENSE_TOKEN,
    )
    return License(
        id=license_id,
        order=order,
        license_key=license_key_generate(),
        token=token,
        kid=signer.kid,
        entitlements=list(order.license_entitlements or []),
        seats=order.license_seats,
        issued_at=issued_at,
        expires_at=expires_at,
        supersedes=supersedes,
    )


def license_issue(*, order_id: Any, actor: Actor) -> License | None:
    """The order's first license, if the order may be delivered and has never had one.
    Running it twice issues one license (the partial unique constraint and the re-check under
    the order's lock). Issues nothing while MAINTENANCE_MODE is on (the sweep comes back)."""
    if maintenance_on():
        return None
    order = Order.objects.select_related("buyer").get(pk=order_id)
    if not order.is_deliverable() or order.licenses.exists():
        return None
    candidate = _signed_license(order)
    with transaction.atomic():
        order = order_lock(order_id)
        if not order.is_deliverable() or order.licenses.exists():
            return None
        candidate.order = order
        candidate.save(force_insert=True)
        audit_append(
            actor=actor,
            action="license.issued",
            subject=candidate,
            data={
                "order": str(order.id),
                "kid": candidate.kid,
                "expires_at": candidate.expires_at.isoformat() if candidate.expires_at else None,
            },
        )
        transaction.on_commit(licenses_issued.labels(kind="first").inc)
    return candidate


@dataclass(frozen=True)
class Verdict:
    valid: bool
    reason: str
    license_id: str | None = None
    claims: dict[str, Any] | None = None


def _int_claim(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _not_a_license(parsed: ParsedJws) -> str | None:
    """Why a token signed by a license key is not a license (a delivery proof, a token of
    another kind), or None when it has a license's shape."""
    typ, claims = parsed.header.get("typ"), parsed.payload
    if typ == LICENSE_TOKEN.typ:
        expected = {"iss": LICENSE_TOKEN.iss, "aud": LICENSE_TOKEN.aud}
        for name, value in expected.items():
            if claims.get(name) != value:
                return f"its {name} is {claims.get(name)!r}, a license's is {value!r}"
        if not _int_claim(claims.get("exp")):
            return "a license carries `exp` (Unix seconds)"
    elif typ == LEGACY_TYP:
        if claims.get("iss") != LEGACY_ISSUER or "aud" in claims:
            return f"its typ is {typ!r} but its iss and aud are not a license's"
        if "exp" in claims and not _int_claim(claims["exp"]):
            return "its `exp` is not Unix seconds"
    else:
        return f"its typ is {typ!r}, a license's is {LICENSE_TOKEN.typ!r}"
    try:
        uuid.UUID(claims.get("jti"))
    except (TypeError, ValueError, AttributeError):
        return "a license's `jti` is its id (a UUID)"
    return None


def license_verify(token: Any, *, now: datetime | None = None) -> Verdict:
    """Signature (against every published license key), kind (a license, not a proof), the
    very token this platform stored for that license, expiry, then revocation. Never raises:
    a malformed token is a verdict like any other. Claims are answered only for a token this
    platform issued as a license."""
    now = now or timezone.now()
    try:
        parsed = jws_parse(token)
        jws_verify(parsed, public_keys_from_store(purpose=SigningKeyPurpose.LICENSE))
    except JwsInvalid as exc:
        return Verdict(False, exc.reason)
    refusal = _not_a_license(parsed)
    if refusal is not None:
        return Verdict(False, f"not-a-license: {refusal}")
    claims = parsed.payload
    license_id = claims["jti"]
    row = (
        License.objects.filter(pk=uuid.UUID(license_id))
        .values("status", "order__status", "token")
        .first()
    )
    # Only the stored token is the license: a token the license key signed with the same jti
    # but other claims (another expiry, more seats) is not one this platform issued.
    if row is None or row["token"] != token:
        return Verdict(False, "unknown-license: this platform did not issue it")
    exp = claims.get("exp")  # absent only on a perpetual license of the legacy form
    if exp is not None and now.timestamp() >= exp:
        return Verdict(False, "expired", license_id, claims)
    # A refunded or disputed order's licenses stop verifying even before the revocation the
    # refund sets off has run (orders hands it to a worker).
    if row["status"] == LicenseStatus.REVOKED or row["order__status"] in REVOKING:
        return Verdict(False, "revoked", license_id, claims)
    return Verdict(True, "valid", license_id, claims)


def license_revoke(*, license_id: Any, reason: str, actor: Actor) -> License:
    reason = reason.strip()
    if not reason:
        raise InvalidInput("Say why the license is revoked.", errors={"reason": ["Required."]})
    order_id = License.objects.filter(pk=license_id).values_list("order_id", flat=True).first()
    if order_id is None:
        raise NotFound(f"There is no license {license_id}.")
    with transaction.atomic():
        order_lock(order_id)  # orders.locks: the order before its licenses
        row = License.objects.select_for_update().get(pk=license_id)
        if row.status == LicenseStatus.REVOKED:
            return row
        row.status = LicenseStatus.REVOKED
        row.revoked_at = timezone.now()
        row.revoked_reason = reason[:300]
        row.save(update_fields=["status", "revoked_at", "revoked_reason"])
        audit_append(
            actor=actor,
            action="license.revoked",
            subject=row,
            data={"order": str(row.order_id), "reason": row.revoked_reason},
        )
    return row


def licenses_revoke_for_order(*, order_id: Any, reason: str, actor: Actor) -> int:
    """Revokes every active license of the order (a refund, a dispute)."""
    ids = list(
        License.objects.filter(order_id=order_id, status=LicenseStatus.ACTIVE).values_list(
            "pk", flat=True
        )
    )
    for license_id in ids:
        license_revoke(license_id=license_id, reason=reason, actor=actor)
    return len(ids)


def license_reissue(*, license_id: Any, reason: str = "", actor: Actor) -> License:
    """A new key and token for the same order, superseding the old license, which is revoked
    (both audited). Refused while MAINTENANCE_MODE is on, for an order that cannot be
    delivered (refunded, disputed, held), and for a license already reissued."""
    if maintenance_on():
        raise Conflict("Maintenance mode is on: no license is issued until it ends.")
    reason = reason.strip()
    old = License.objects.select_related("order__buyer").filter(pk=license_id).first()
    if old is None:
        raise NotFound(f"There is no license {license_id}.")
    _check_reissuable(old.order)
    # Signing may call KMS or the signing proxy: done before any lock is taken.
    candidate = _signed_license(old.order, supersedes=old)
    with transaction.atomic():
        # The order first (orders.locks): its state is re-read under its lock, so a refund
        # that lands meanwhile wins.
        order = order_lock(old.order_id)
        _check_reissuable(order)
        locked = License.objects.select_for_update().get(pk=old.pk)
        if License.objects.filter(supersedes=locked).exists():
            raise Conflict(f"License {locked.license_key} was already reissued.")
        revoked_reason = f"reissued: {reason}" if reason else "reissued"
        revoked_now = locked.status == LicenseStatus.ACTIVE
        if revoked_now:
            # Before the new license is saved: one active license per order is a constraint.
            locked.status = LicenseStatus.REVOKED
            locked.revoked_at = timezone.now()
            locked.revoked_reason = revoked_reason[:300]
            locked.save(update_fields=["status", "revoked_at", "revoked_reason"])
        candidate.order = order
        candidate.save(force_insert=True)
        if revoked_now:
            audit_append(
                actor=actor,
                action="license.revoked",
                subject=locked,
                data={
                    "order": str(order.id),
                    "reason": revoked_reason[:300],
                    "superseded_by": str(candidate.pk),
                },
            )
        audit_append(
            actor=actor,
            action="license.reissued",
            subject=candidate,
            data={
                "order": str(order.id),
                "supersedes": str(locked.pk),
                "kid": candidate.kid,
                "reason": reason[:300],
                "expires_at": candidate.expires_at.isoformat() if candidate.expires_at else None,
            },
        )
        transaction.on_commit(licenses_issued.labels(kind="reissue").inc)
    return candidate


def _check_reissuable(order: Order) -> None:
    if not order.is_deliverable():
        raise Conflict(
            f"Order {order.id} cannot be delivered ({order.delivery_state}); "
            "a license is not reissued for it."
        )
