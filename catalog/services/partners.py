"""Partners and the keys with which they sign manifests."""

import base64

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.services import audit_append
from catalog.cache import catalog_changed
from catalog.exceptions import (
    InvalidPartnerKey,
)
from catalog.models import (
    KeyStatus,
    ManifestStatus,
    Partner,
    PartnerKey,
    Sku,
    SkuStatus,
)
from catalog.services.changes import changes, partner_fields, recorded
from catalog.services.status import sku_status_change
from marketplace.actors import Actor
from marketplace.kernel import decode_signature
from marketplace.validation import full_clean

# --- Partners ----------------------------------------------------------------------------------


@transaction.atomic
def partner_save(*, partner: Partner, actor: Actor) -> Partner:
    """Creates or changes a partner; records `partner.created` or `partner.updated` (nothing
    when no field changed)."""
    before = (
        partner_fields(Partner.objects.select_for_update().get(pk=partner.pk))
        if partner.pk is not None
        else None
    )
    full_clean(partner)
    partner.save()
    after = partner_fields(partner)
    if before is None:
        audit_append(actor=actor, action="partner.created", subject=partner, data=recorded(after))
    elif change := changes(before, after):
        audit_append(actor=actor, action="partner.updated", subject=partner, data=change)
    catalog_changed()
    return partner


def public_key_parse(text: str) -> bytes:
    """Returns the raw Ed25519 public key from base64 (32 bytes) or a PEM SubjectPublicKeyInfo."""
    text = text.strip()
    if text.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(text.encode())
        except ValueError as exc:
            raise _public_key_problem(f"The PEM public key cannot be read: {exc}.") from None
        if not isinstance(key, Ed25519PublicKey):
            raise _public_key_problem("The PEM key is not an Ed25519 public key.")
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    try:
        raw = decode_signature(text)
    except ValueError:
        raise _public_key_problem("The public key is neither base64 nor PEM.") from None
    if len(raw) != 32:
        raise _public_key_problem(f"An Ed25519 public key is 32 bytes; this one is {len(raw)}.")
    try:
        Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise _public_key_problem(f"The public key is not a valid Ed25519 key: {exc}.") from None
    return raw


def _public_key_problem(message: str) -> InvalidPartnerKey:
    return InvalidPartnerKey(message, errors={"public_key": [message]})


def public_key_base64(text: str) -> str:
    """The key as it is registered: base64 of the raw 32 bytes, from base64 or PEM."""
    return base64.b64encode(public_key_parse(text)).decode()


def partner_key_build(*, partner: Partner, key_id: str, public_key: str) -> PartnerKey:
    """The key partner_key_register would register, not saved. Raises InvalidPartnerKey with
    each problem at its field (`key_id`, `public_key`): a key that is not Ed25519, a key id the
    partner already has, a key registered already (to this partner or another)."""
    raw = public_key_parse(public_key)
    key = PartnerKey(
        partner=partner,
        key_id=key_id,
        public_key=base64.b64encode(raw).decode(),
        fingerprint=PartnerKey.fingerprint_of(raw),
    )
    # A partner not saved yet has no keys to clash with.
    exclude = {"partner"} if partner.pk is None else set()
    try:
        full_clean(key, exclude=exclude)
    except ValidationError as exc:
        errors = {field: list(messages) for field, messages in exc.message_dict.items()}
        if "fingerprint" in errors:
            # The fingerprint is computed from the public key: say which key holds it.
            holder = PartnerKey.objects.select_related("partner").get(fingerprint=key.fingerprint)
            del errors["fingerprint"]
            errors.setdefault("public_key", []).append(
                f"This key is already registered as {holder}."
            )
        raise InvalidPartnerKey(
            "The key cannot be registered: "
            + " ".join(message for messages in errors.values() for message in messages),
            errors=errors,
        ) from None
    return key


@transaction.atomic
def partner_key_register(
    *, partner: Partner, key_id: str, public_key: str, actor: Actor
) -> PartnerKey:
    """Registers a partner's manifest-signing key (see partner_key_build for what is refused).
    Records `partner.key_registered`."""
    key = partner_key_build(partner=partner, key_id=key_id, public_key=public_key)
    try:
        with transaction.atomic():
            key.save()
    except IntegrityError:
        # A concurrent registration of the same key or key id won the race.
        raise InvalidPartnerKey("This key or key id is already registered.") from None
    audit_append(
        actor=actor,
        action="partner.key_registered",
        subject=partner,
        data={"key_id": key.key_id, "fingerprint": key.fingerprint},
    )
    return key


@transaction.atomic
def partner_key_revoke(*, key_pk: int, reason: str, actor: Actor) -> PartnerKey:
    """Revokes a key. Manifests it verified (mismatched ones too) no longer count: their SKUs
    leave sale.

    Records `partner.key_revoked`, and for each SKU whose manifest the key had verified
    `sku.manifest_rejected` (and `sku.suspended` if it was on sale). Revoking a revoked key
    changes and records nothing.
    """
    key = PartnerKey.objects.select_for_update().select_related("partner").get(pk=key_pk)
    if key.status == KeyStatus.REVOKED:
        return key
    now = timezone.now()
    key.status = KeyStatus.REVOKED
    key.revoked_at = now
    key.revoked_reason = reason
    key.save(update_fields=["status", "revoked_at", "revoked_reason"])

    affected = list(
        Sku.objects.select_for_update(of=("self",))
        .filter(
            partner=key.partner,
            manifest_key_id=key.key_id,
            manifest_status__in=[ManifestStatus.VERIFIED, ManifestStatus.MISMATCH],
        )
        .order_by("pk")
    )
    # The cause first, then what it did to each SKU.
    audit_append(
        actor=actor,
        action="partner.key_revoked",
        subject=key.partner,
        data={
            "key_id": key.key_id,
            "fingerprint": key.fingerprint,
            "reason": reason,
            "manifests_rejected": [sku.slug for sku in affected],
            "skus_suspended": [sku.slug for sku in affected if sku.status == SkuStatus.ACTIVE],
        },
    )
    for sku in affected:
        sku.manifest_status = ManifestStatus.REJECTED
        sku.manifest_detail = f"signed with key {key.key_id!r}, revoked: {reason or 'no reason'}"
        fields = ["manifest_status", "manifest_detail", "updated_at"]
        audit_append(
            actor=actor,
            action="sku.manifest_rejected",
            subject=sku,
            data={"reason": sku.manifest_detail, "key_id": key.key_id},
        )
        if sku.status == SkuStatus.ACTIVE:
            fields += sku_status_change(
                sku,
                target=SkuStatus.SUSPENDED,
                reason=f"manifest signing key {key.key_id!r} was revoked",
                actor=actor,
                at=now,
            )
        sku.save(update_fields=fields)
    catalog_changed()
    return key
