"""Packaging an order's artifact for its buyer, and the signed proof of the delivery.

Packaging is safe to run twice and to crash anywhere: the data key is generated and stored
(wrapped) before anything is written, the package goes to a name fixed by the delivery's id,
and the delivery becomes `ready` (with its proof) in one transaction that first re-checks it is
still pending. A retry after a crash therefore writes the same name again and ends in one
delivery, one proof.
"""

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from audit.services import audit_append
from audit.signing_keys import signing_key_active
from licensing import envelope
from licensing.jws import jws_sign
from licensing.keys import data_key_generate, data_key_unwrap
from licensing.models import CURRENT_DELIVERY, Delivery, DeliveryStatus, Proof
from licensing.storage import delivery_name, package_spool, package_store
from marketplace.actors import Actor
from marketplace.canonical import canonical_json
from marketplace.exceptions import Conflict, NotFound
from marketplace.keystore import Signer, signer_for
from marketplace.maintenance import maintenance_on
from marketplace.models import SigningKeyPurpose
from orders.locks import order_lock
from orders.models import FinancePosting, Order, PostingKind

PACKAGE_FORMAT = "mkpkg-v1"


class PackagingFailed(Exception):
    """Packaging cannot succeed as things are (the artifact no longer matches its hash)."""


def delivery_context(delivery: Delivery) -> bytes:
    """The package header's context: binds the package (and a key sealed for it) to the
    delivery."""
    return f"marketplace:delivery:{delivery.id}".encode()


def delivery_create(*, order_id: Any, actor: Actor) -> Delivery | None:
    """The order's first delivery, pending, if the order may be delivered and has none.
    Nothing while MAINTENANCE_MODE is on (the fulfilment sweep comes back for the order)."""
    if maintenance_on():
        return None
    with transaction.atomic():
        order = order_lock(order_id)
        if not order.is_deliverable() or order.deliveries.exists():
            return None
        delivery = Delivery.objects.create(order=order)
        audit_append(
            actor=actor,
            action="delivery.created",
            subject=delivery,
            data={"order": str(order.id)},
        )
        transaction.on_commit(lambda: _enqueue(delivery))
    return delivery


def _enqueue(delivery: Delivery) -> None:
    from licensing.tasks import delivery_package  # the task module imports this one

    delivery_package.delay(str(delivery.id))


def _data_key(delivery: Delivery) -> bytes:
    """The delivery's data key; made and stored wrapped on the first attempt, so every later
    attempt encrypts under the same key. Leaves `delivery` holding the stored wrapping."""
    if not delivery.wrapped_key:
        key = data_key_generate(delivery_id=str(delivery.id))
        stored = Delivery.objects.filter(pk=delivery.pk, wrapped_key=b"").update(
            wrapped_key=key.wrapped, key_wrapping=key.wrapping
        )
        if stored:
            delivery.wrapped_key, delivery.key_wrapping = key.wrapped, key.wrapping
            return key.plaintext
        # Another attempt stored its key first: that one is the delivery's key.
        delivery.refresh_from_db(fields=["wrapped_key", "key_wrapping"])
    return data_key_unwrap(
        delivery_id=str(delivery.id),
        wrapped=bytes(delivery.wrapped_key),
        wrapping=delivery.key_wrapping,
    )


def proof_payload(
    *,
    order: Order,
    delivery_id: str,
    artifact_sha256: str,
    package_sha256: str,
    ledger_reference: str,
    delivered_at: datetime,
    signer_kid: str,
) -> dict[str, Any]:
    return {
        "order": str(order.id),
        "delivery": delivery_id,
        "sku": order.sku_slug,
        "sku_version": order.sku_version,
        "artifact_sha256": artifact_sha256,
        "package_sha256": package_sha256,
        "ledger_reference": ledger_reference,
        "delivered_at": delivered_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "signer_kid": signer_kid,
    }


def proof_fingerprint(payload: dict[str, Any]) -> str:
    """SHA-256 of the canonical payload: the same inputs always give the same fingerprint."""
    return hashlib.sha256(canonical_json(payload)).hexdigest()


@dataclass(frozen=True)
class StoredPackage:
    """What the upload step stored: the commit step records it and signs the proof."""

    delivery: Delivery
    name: str
    info: envelope.PackageInfo
    signer: Signer


def _pending(delivery_id: Any) -> Delivery | str:
    delivery = (
        Delivery.objects.select_related("order__artifact", "order__sku__artifact")
        .filter(pk=delivery_id)
        .first()
    )
    if delivery is None:
        return "missing"
    if delivery.status != DeliveryStatus.PENDING:
        return delivery.status
    return delivery


def delivery_package_upload(*, delivery_id: Any) -> StoredPackage | str:
    """The first half of packaging: counts the attempt, encrypts the artifact under the
    delivery's data key and stores the package under the delivery's name. Nothing is
    recorded as delivered yet; running it again stores the same bytes under the same name.
    Answers the delivery's status instead when it is not pending.

    Raises PackagingFailed when the stored artifact no longer matches its recorded hash
    (nothing is stored then), and what a retry may cure (storage, KMS, signer outages).
    """
    delivery = _pending(delivery_id)
    if isinstance(delivery, str):
        return delivery
    Delivery.objects.filter(pk=delivery.pk).update(
        attempts=F("attempts") + 1, attempted_at=timezone.now()
    )
    order = delivery.order
    # The artifact sold with the order; orders from before that was recorded fall back to the
    # SKU's current one.
    artifact = order.artifact or order.sku.artifact
    if artifact is None:
        raise PackagingFailed(f"SKU {order.sku_slug} has no artifact")
    data_key = _data_key(delivery)
    # The signer is taken before anything is stored: a signer outage fails the attempt
    # before the upload, and the stored object names the key that signs the proof.
    signer = signer_for(signing_key_active(purpose=SigningKeyPurpose.LICENSE))
    name = delivery_name(order_id=str(order.id), delivery_id=str(delivery.id))
    context = delivery_context(delivery)
    # The package is spooled to a temporary file (its hash is needed before it is stored), so
    # memory stays bounded by the chunk size whatever the artifact's size.
    with (
        default_storage.open(artifact.storage_key, "rb") as source,
        package_spool(name) as package,
    ):
        info = envelope.encrypt_stream(
            source,
            package,
            data_key=data_key,
            chunk_size=settings.DELIVERY_CHUNK_BYTES,
            context=context,
            # Derived from the delivery's own key: every attempt writes the same bytes, so two
            # workers packaging the same delivery (a redelivered task, the sweep) cannot leave
            # a package other than the one the proof names. The precondition (the key only
            # ever seals this artifact) holds because a hash mismatch below suspends the
            # delivery before anything is stored, and regeneration makes a new key.
            nonce_prefix=envelope.derived_nonce_prefix(data_key, context),
        )
        if info.plaintext_sha256 != artifact.sha256:
            raise PackagingFailed(
                f"the stored artifact's SHA-256 is {info.plaintext_sha256}, "
                f"not the recorded {artifact.sha256}"
            )
        package.seek(0)
        metadata = {
            "delivery": str(delivery.id),
            "order": str(order.id),
            "format": PACKAGE_FORMAT,
            "key-wrapping": delivery.key_wrapping,
            "package-sha256": info.package_sha256,
            "artifact-sha256": info.plaintext_sha256,
            "proof-signer-kid": signer.kid,
        }
        if order.sku.manifest_signature:
            metadata["manifest-signature-sha256"] = hashlib.sha256(
                order.sku.manifest_signature.encode()
            ).hexdigest()
        package_store(name, package, metadata=metadata)
    return StoredPackage(delivery=delivery, name=name, info=info, signer=signer)


def delivery_package(*, delivery_id: Any, actor: Actor) -> str:
    """Packages one pending delivery (upload, then commit). Answers its status afterwards:
    `ready`, or what it already was, or `maintenance` while MAINTENANCE_MODE is on (nothing
    is done; the fulfilment sweep comes back for it).

    Raises what a retry may cure (storage, KMS or signer outages) for the task to retry, and
    PackagingFailed when a retry cannot help.
    """
    if maintenance_on():
        return "maintenance"
    stored = delivery_package_upload(delivery_id=delivery_id)
    if isinstance(stored, str):
        return stored
    return _delivery_ready(stored, actor=actor)


def _delivery_ready(stored: StoredPackage, *, actor: Actor) -> str:
    """The second half: the proof is signed and the delivery becomes `ready` with it, in one
    transaction that first re-checks the delivery is still pending (a concurrent attempt may
    have finished it, or a refund withdrawn it)."""
    delivery, info, signer = stored.delivery, stored.info, stored.signer
    order = delivery.order
    delivered_at = timezone.now().replace(microsecond=0)
    ledger_reference = (
        FinancePosting.objects.filter(order=order, kind=PostingKind.SALE)
        .values_list("ledger_reference", flat=True)
        .first()
        or ""
    )
    payload = proof_payload(
        order=order,
        delivery_id=str(delivery.id),
        artifact_sha256=info.plaintext_sha256,
        package_sha256=info.package_sha256,
        ledger_reference=ledger_reference,
        delivered_at=delivered_at,
        signer_kid=signer.kid,
    )
    token = jws_sign(payload, signer, typ="mkp-proof+jws")

    with transaction.atomic():
        locked = Delivery.objects.select_for_update().get(pk=delivery.pk)
        if locked.status != DeliveryStatus.PENDING:
            return locked.status
        locked.status = DeliveryStatus.READY
        locked.format = PACKAGE_FORMAT
        locked.storage_name = stored.name
        locked.artifact_sha256 = info.plaintext_sha256
        locked.package_sha256 = info.package_sha256
        locked.package_size = info.package_size
        locked.ready_at = delivered_at
        locked.last_error = ""
        locked.save()
        proof = Proof.objects.create(
            order=order,
            delivery=locked,
            payload=payload,
            fingerprint=proof_fingerprint(payload),
            token=token,
            signer_kid=signer.kid,
        )
        audit_append(
            actor=actor,
            action="delivery.ready",
            subject=locked,
            data={
                "order": str(order.id),
                "package_sha256": info.package_sha256,
                "artifact_sha256": info.plaintext_sha256,
                "key_wrapping": locked.key_wrapping,
                "proof": str(proof.id),
                "proof_fingerprint": proof.fingerprint,
                "signer_kid": signer.kid,
            },
        )
    return DeliveryStatus.READY


def delivery_failure_record(*, delivery_id: Any, error: str, permanent: bool, actor: Actor) -> str:
    """Records a failed attempt (`error` starts with a one-line summary) and answers the
    delivery's status: still `pending` when a retry may follow, `suspended` after a permanent
    failure or once the delivery has had MARKETPLACE_DELIVERY_MAX_ATTEMPTS attempts (visible
    in the admin, where it can be regenerated). Attempts are counted on the delivery, not per
    task, so a delivery the sweep sent again does not get a fresh allowance."""
    with transaction.atomic():
        delivery = Delivery.objects.select_for_update().filter(pk=delivery_id).first()
        if delivery is None:
            return "missing"
        if delivery.status != DeliveryStatus.PENDING:
            return delivery.status
        delivery.last_error = error[:4000]
        fields = ["last_error"]
        if permanent or delivery.attempts >= settings.DELIVERY_MAX_ATTEMPTS:
            delivery.status = DeliveryStatus.SUSPENDED
            fields.append("status")
            audit_append(
                actor=actor,
                action="delivery.suspended",
                subject=delivery,
                data={
                    "order": str(delivery.order_id),
                    "attempts": delivery.attempts,
                    "permanent": permanent,
                    "error": error.strip().splitlines()[0][:300] if error.strip() else "",
                },
            )
        delivery.save(update_fields=fields)
        return delivery.status


def delivery_regenerate(*, delivery_id: Any, reason: str, actor: Actor) -> Delivery:
    """A new package under a new data key, superseding the delivery. Refused for an order
    that is refunded, disputed or otherwise not deliverable, and while MAINTENANCE_MODE is on.
    """
    if maintenance_on():
        raise Conflict("Maintenance mode is on: no delivery is packaged until it ends.")
    order_id = Delivery.objects.filter(pk=delivery_id).values_list("order_id", flat=True).first()
    if order_id is None:
        raise NotFound(f"There is no delivery {delivery_id}.")
    with transaction.atomic():
        # The order before its delivery (orders.locks), then the delivery read again.
        order = order_lock(order_id)
        old = Delivery.objects.select_for_update().get(pk=delivery_id)
        if not order.is_deliverable():
            raise Conflict(
                f"Order {order.id} is {order.status} ({order.delivery_state}): its delivery "
                "cannot be regenerated."
            )
        if old.status not in CURRENT_DELIVERY:
            raise Conflict(f"Delivery {old.id} is {old.status}; regenerate the current one.")
        previous_status = old.status
        old.status = DeliveryStatus.SUPERSEDED
        old.save(update_fields=["status"])
        new = Delivery.objects.create(order=order, supersedes=old)
        audit_append(
            actor=actor,
            action="delivery.regenerated",
            subject=new,
            data={
                "order": str(order.id),
                "supersedes": str(old.id),
                "superseded_status": previous_status,
                "reason": reason[:300],
            },
        )
        transaction.on_commit(lambda: _enqueue(new))
    return new


def deliveries_withdraw_for_order(*, order_id: Any, reason: str, actor: Actor) -> int:
    """A refunded or disputed order's packages can no longer be downloaded."""
    withdrawn = 0
    with transaction.atomic():
        order_lock(order_id)  # orders.locks: the order before its deliveries
        for delivery in Delivery.objects.select_for_update().filter(
            order_id=order_id, status__in=CURRENT_DELIVERY
        ):
            delivery.status = DeliveryStatus.WITHDRAWN
            delivery.save(update_fields=["status"])
            audit_append(
                actor=actor,
                action="delivery.withdrawn",
                subject=delivery,
                data={"order": str(order_id), "reason": reason[:300]},
            )
            withdrawn += 1
    return withdrawn
