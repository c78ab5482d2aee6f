"""Packaging an order's artifact for its buyer, and the signed proof of the delivery.

Packaging is safe to run twice and to crash anywhere: the data key is generated and stored
(wrapped) before anything is written, the package goes to a name fixed by the delivery's id,
and the delivery becomes `ready` (with its proof) in one transaction that first re-checks it is
still pending. A retry after a crash therefore writes the same name again and ends in one
delivery, one proof.

An attempt holds the delivery while it works: it is claimed under the row's lock, and the
attempt moves `heartbeat_at` at most every MARKETPLACE_DELIVERY_HEARTBEAT_SECONDS while it
streams the package. Another task for the same delivery (a re-send, a redelivered message)
does nothing while that heartbeat is fresh; once it is older than
MARKETPLACE_DELIVERY_STALE_SECONDS the attempt's worker is taken to have died, the fulfilment
sweep sends the delivery again and the next task takes it over.
"""

import contextlib
import hashlib
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, BinaryIO

from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings
from django.core.files.storage import default_storage
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from audit.services import audit_append
from audit.signing_keys import signing_key_active
from licensing import envelope
from licensing.jws import PROOF_TOKEN, jws_sign
from licensing.keys import data_key_generate, data_key_unwrap
from licensing.models import CURRENT_DELIVERY, Delivery, DeliveryStatus, Proof
from licensing.storage import (
    delivery_name,
    package_spool,
    package_store,
    partial_file_remove,
    partial_files,
    partial_upload_abort,
    partial_uploads,
)
from marketplace.actors import Actor
from marketplace.canonical import canonical_json
from marketplace.exceptions import Conflict, NotFound
from marketplace.keystore import Signer, signer_for
from marketplace.maintenance import maintenance_on
from marketplace.models import SigningKeyPurpose
from orders.locks import order_lock
from orders.models import FinancePosting, Order, PostingKind

PACKAGE_FORMAT = "mkpkg-v1"

logger = logging.getLogger(__name__)


class PackagingFailed(Exception):
    """Packaging cannot succeed as things are (the artifact no longer matches its hash)."""


class AttemptSuperseded(Exception):
    """The attempt no longer holds its delivery: its heartbeat went stale and another attempt
    took the delivery over, or the delivery stopped being pending (withdrawn, superseded)."""


def _stale_before(now: datetime) -> datetime:
    return now - timedelta(seconds=settings.DELIVERY_STALE_SECONDS)


def _suspend(delivery: Delivery, *, error: str, permanent: bool, actor: Actor) -> None:
    """Suspends a pending delivery the caller holds locked, audited (`delivery.suspended`),
    keeping `error` (a one-line summary first) as its last error."""
    delivery.last_error = error[:4000]
    delivery.status = DeliveryStatus.SUSPENDED
    delivery.save(update_fields=["last_error", "status"])
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


def _attempt_claim(delivery_id: Any, *, actor: Actor) -> int | None:
    """Counts a new attempt and holds the delivery for it; answers the attempt's number, or
    None when the delivery is not pending or another attempt holds it (its heartbeat is
    fresh). Under the delivery's lock, so of two tasks at once exactly one claims it.

    A delivery that already had MARKETPLACE_DELIVERY_MAX_ATTEMPTS attempts is suspended
    instead (None): attempts whose workers were killed record no failure, so without this a
    package that kills its worker would be taken over every stale period for ever."""
    with transaction.atomic():
        delivery = Delivery.objects.select_for_update().filter(pk=delivery_id).first()
        if delivery is None or delivery.status != DeliveryStatus.PENDING:
            return None
        now = timezone.now()
        if delivery.heartbeat_at is not None and delivery.heartbeat_at >= _stale_before(now):
            return None
        if delivery.attempts >= settings.DELIVERY_MAX_ATTEMPTS:
            stale = "" if delivery.heartbeat_at is None else delivery.heartbeat_at.isoformat()
            summary = (
                f"{delivery.attempts} attempts made (MARKETPLACE_DELIVERY_MAX_ATTEMPTS), "
                "none finished"
                + (f"; the last stopped beating at {stale} (its worker died?)" if stale else "")
            )
            _suspend(
                delivery,
                error=summary + (f"\n\n{delivery.last_error}" if delivery.last_error else ""),
                permanent=False,
                actor=actor,
            )
            return None
        if delivery.heartbeat_at is not None:
            # Its attempt stopped beating without letting go: its worker died or stalled.
            logger.warning(
                "delivery %s: attempt %d taken over, its heartbeat stale since %s",
                delivery.pk,
                delivery.attempts,
                delivery.heartbeat_at.isoformat(),
            )
        delivery.attempts += 1
        delivery.attempted_at = delivery.heartbeat_at = now
        delivery.save(update_fields=["attempts", "attempted_at", "heartbeat_at"])
        return delivery.attempts


def _attempt_release(delivery_id: Any, attempt: int) -> None:
    """A failed attempt lets go at once, so that its task's retry (after its backoff) is not
    refused as a duplicate. Best effort: if the database is what failed, the heartbeat goes
    stale on its own."""
    with contextlib.suppress(DatabaseError):
        Delivery.objects.filter(pk=delivery_id, attempts=attempt).update(heartbeat_at=None)


class Heartbeat:
    """Moves the attempt's `heartbeat_at` when `beat()` is called, at most every
    MARKETPLACE_DELIVERY_HEARTBEAT_SECONDS: one UPDATE of one row, which also tells the attempt
    it still holds the delivery (AttemptSuperseded otherwise). Called as bytes move, so a
    stalled upload stops beating as a dead worker does. A beat the database refuses is skipped
    (the next may pass; the commit needs the database anyway). Thread-safe: the S3 upload reads
    the package in a thread of its own, whose database connection is closed after each beat."""

    def __init__(self, delivery_id: Any, attempt: int) -> None:
        self.delivery_id, self.attempt = delivery_id, attempt
        self._interval = settings.DELIVERY_HEARTBEAT_SECONDS
        self._last = time.monotonic()
        self._lock = threading.Lock()
        self._owner = threading.get_ident()

    def beat(self) -> None:
        if time.monotonic() - self._last < self._interval:
            return
        with self._lock:
            if time.monotonic() - self._last < self._interval:
                return
            self._last = time.monotonic()
            try:
                held = Delivery.objects.filter(
                    pk=self.delivery_id, attempts=self.attempt, status=DeliveryStatus.PENDING
                ).update(heartbeat_at=timezone.now())
            except DatabaseError as exc:
                logger.warning("heartbeat of delivery %s skipped: %s", self.delivery_id, exc)
                return
            finally:
                if threading.get_ident() != self._owner:
                    connection.close()
        if not held:
            raise AttemptSuperseded(
                f"attempt {self.attempt} of delivery {self.delivery_id} no longer holds it"
            )


class _Beating:
    """A file whose reads and writes beat a Heartbeat; everything else is the file's. (The
    S3 upload also beats as it sends: package_store's progress.)"""

    def __init__(self, file: BinaryIO, heartbeat: Heartbeat) -> None:
        self._file, self._heartbeat = file, heartbeat

    def write(self, data: Any) -> int:
        self._heartbeat.beat()
        return self._file.write(data)

    def read(self, size: int = -1) -> bytes:
        self._heartbeat.beat()
        return self._file.read(size)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


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
        transaction.on_commit(lambda: _enqueue(delivery), robust=True)
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
    """The proof's claims. `iss` and `aud` (with the header's `typ`) say it is a proof, so no
    license check takes it for a license although the same key signs both."""
    return {
        "iss": PROOF_TOKEN.iss,
        "aud": PROOF_TOKEN.aud,
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
    attempt: int
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


_ATTEMPT_ATTRIBUTE = "delivery_attempt"


def failed_attempt(exc: BaseException) -> int | None:
    """The number of the attempt an exception from delivery_package ended, for
    delivery_failure_record; None when it was raised before any attempt was claimed."""
    return getattr(exc, _ATTEMPT_ATTRIBUTE, None)


def delivery_package_upload(*, delivery_id: Any, actor: Actor) -> StoredPackage | str:
    """The first half of packaging: counts the attempt, encrypts the artifact under the
    delivery's data key and stores the package under the delivery's name. Nothing is
    recorded as delivered yet; running it again stores the same bytes under the same name.
    Answers the delivery's status instead when it is not pending (or was just suspended at
    MARKETPLACE_DELIVERY_MAX_ATTEMPTS).

    Raises PackagingFailed when the stored artifact no longer matches its recorded hash
    (nothing is stored then), and what a retry may cure (storage, KMS, signer outages); what
    it raises names its attempt (failed_attempt).
    """
    delivery = _pending(delivery_id)
    if isinstance(delivery, str):
        return delivery
    attempt = _attempt_claim(delivery.pk, actor=actor)
    if attempt is None:
        # Another attempt holds it, or it just stopped being pending: nothing to do here.
        status = Delivery.objects.filter(pk=delivery.pk).values_list("status", flat=True)
        return status.first() or "missing"
    try:
        return _package_upload(delivery, Heartbeat(delivery.pk, attempt))
    except BaseException as exc:
        _attempt_release(delivery.pk, attempt)
        with contextlib.suppress(AttributeError):  # an exception type without __dict__
            setattr(exc, _ATTEMPT_ATTRIBUTE, attempt)
        raise


def _package_upload(delivery: Delivery, heartbeat: Heartbeat) -> StoredPackage:
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
        package_spool(name, owner=f"{delivery.id}.{heartbeat.attempt}") as spool,
    ):
        package = _Beating(spool, heartbeat)
        info = envelope.encrypt_stream(
            source,
            package,  # type: ignore[arg-type]
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
        package_store(
            name,
            package,  # type: ignore[arg-type]
            metadata=metadata,
            # s3transfer reads the package a part (8 MiB) at a time, several parts ahead: on a
            # slow link a live upload would stop beating between reads, so bytes sent beat too.
            progress=lambda _sent: heartbeat.beat(),
        )
    return StoredPackage(
        delivery=delivery, attempt=heartbeat.attempt, name=name, info=info, signer=signer
    )


def delivery_package(*, delivery_id: Any, actor: Actor) -> str:
    """Packages one pending delivery (upload, then commit). Answers its status afterwards:
    `ready`, or what it already was, or `maintenance` while MAINTENANCE_MODE is on (nothing
    is done; the fulfilment sweep comes back for it).

    Raises what a retry may cure (storage, KMS or signer outages) for the task to retry, and
    PackagingFailed when a retry cannot help.
    """
    if maintenance_on():
        return "maintenance"
    stored = delivery_package_upload(delivery_id=delivery_id, actor=actor)
    if isinstance(stored, str):
        return stored
    return delivery_package_commit(stored, actor=actor)


def delivery_package_commit(stored: StoredPackage, *, actor: Actor) -> str:
    """The second half: the proof is signed and the delivery becomes `ready` with it, in one
    transaction that first re-checks the delivery is still pending (a concurrent attempt may
    have finished it, or a refund withdrawn it) and still held by this attempt.

    Raises AttemptSuperseded when another attempt took the delivery over meanwhile: that one
    finishes it."""
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
    token = jws_sign(payload, signer, kind=PROOF_TOKEN)

    with transaction.atomic():
        locked = Delivery.objects.select_for_update().get(pk=delivery.pk)
        if locked.status != DeliveryStatus.PENDING:
            return locked.status
        if locked.attempts != stored.attempt:
            raise AttemptSuperseded(
                f"attempt {stored.attempt} of delivery {delivery.pk} was taken over by "
                f"attempt {locked.attempts}"
            )
        locked.status = DeliveryStatus.READY
        locked.format = PACKAGE_FORMAT
        locked.storage_name = stored.name
        locked.artifact_sha256 = info.plaintext_sha256
        locked.package_sha256 = info.package_sha256
        locked.package_size = info.package_size
        locked.ready_at = delivered_at
        locked.heartbeat_at = None
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


SUPERSEDED_ATTEMPT = "superseded-attempt"


def delivery_failure_record(
    *, delivery_id: Any, attempt: int | None, error: str, permanent: bool, actor: Actor
) -> str:
    """Records the failure of attempt `attempt` (failed_attempt; `error` starts with a
    one-line summary) and answers the delivery's status: still `pending` when a retry may
    follow, `suspended` after a permanent failure or once the delivery has had
    MARKETPLACE_DELIVERY_MAX_ATTEMPTS attempts (visible in the admin, where it can be
    regenerated). Attempts are counted on the delivery, not per task, so a delivery the sweep
    sent again does not get a fresh allowance.

    An attempt another one has taken over since records nothing (SUPERSEDED_ATTEMPT): the live
    attempt's error and fate are its own."""
    with transaction.atomic():
        delivery = Delivery.objects.select_for_update().filter(pk=delivery_id).first()
        if delivery is None:
            return "missing"
        if delivery.status != DeliveryStatus.PENDING:
            return delivery.status
        if attempt is not None and delivery.attempts != attempt:
            return SUPERSEDED_ATTEMPT
        if permanent or delivery.attempts >= settings.DELIVERY_MAX_ATTEMPTS:
            _suspend(delivery, error=error, permanent=permanent, actor=actor)
        else:
            delivery.last_error = error[:4000]
            delivery.save(update_fields=["last_error"])
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
        transaction.on_commit(lambda: _enqueue(new), robust=True)
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


def _delivery_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def delivery_spool_sweep() -> dict[str, int]:
    """Removes what killed attempts left behind: local partial package files and S3
    multipart uploads of packages, older than MARKETPLACE_DELIVERY_STALE_SECONDS and held by
    no live attempt (one whose delivery is pending with a fresh heartbeat). An attempt that
    fails removes its own partial file; this is for those that could not."""
    stale_before = _stale_before(timezone.now())
    files = [partial for partial in partial_files() if partial.modified < stale_before]
    uploads = [upload for upload in partial_uploads() if upload.initiated < stale_before]
    ids = {_delivery_uuid(item.delivery_id) for item in [*files, *uploads]} - {None}
    live = {
        str(pk): attempt
        for pk, attempt in Delivery.objects.filter(
            pk__in=ids, status=DeliveryStatus.PENDING, heartbeat_at__gte=stale_before
        ).values_list("pk", "attempts")
    }
    removed = 0
    for partial in files:
        if partial.attempt is not None and live.get(partial.delivery_id) == partial.attempt:
            continue
        removed += partial_file_remove(partial)
    aborted = 0
    for upload in uploads:
        # Any upload of a delivery a live attempt holds may be that attempt's (S3's clock is not
        # ours to compare with): kept until the delivery is ready or the attempt dies.
        if upload.delivery_id in live:
            continue
        try:
            # False: completed or aborted since it was listed (its attempt finished meanwhile).
            aborted += partial_upload_abort(upload)
        except (BotoCoreError, ClientError) as exc:
            # One upload S3 will not abort now must not keep the sweep from the others; the
            # next sweep tries it again.
            logger.warning(
                "spool sweep: upload %s of %s not aborted: %s", upload.upload_id, upload.key, exc
            )
    if removed or aborted:
        logger.info("spool sweep: %d partial files removed, %d uploads aborted", removed, aborted)
    return {"files": removed, "uploads": aborted}
