"""Delivery packaging in one process, on PostgreSQL: what the package holds, how its data key
is kept (local master key, moto's KMS), what a retry or a crash leaves behind, failures that
are retried and failures that suspend, regeneration, the proof, and the S3 object (moto's
object-lock bucket)."""

import base64
import hashlib
import io
import json
import os
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from botocore.exceptions import BotoCoreError, ClientError
from django.core.files.storage import default_storage
from joserfc import jws
from joserfc.jwk import KeySet
from prometheus_client import REGISTRY

from audit.models import AuditEvent
from catalog.models import Sku
from licensing import envelope
from licensing.keys import DataKeyError, data_key_unwrap
from licensing.models import Delivery, DeliveryStatus, License, Proof
from licensing.sealing import b64url_decode
from licensing.services import (
    PackagingFailed,
    delivery_context,
    delivery_package,
    delivery_regenerate,
    order_fulfil,
    order_revoke,
    proof_fingerprint,
    proof_payload,
)
from licensing.services.deliveries import delivery_package_upload
from licensing.storage import package_open
from licensing.tasks import TRANSIENT
from licensing.tasks import delivery_package as delivery_package_task
from marketplace.canonical import canonical_json
from marketplace.exceptions import Conflict
from orders.models import FinancePosting, Order, PostingStatus, WebhookEvent, WebhookStatus
from orders.services import finance_posting_send, webhook_event_process, webhook_secrets
from tests.catalog.factories import TEST_ACTOR
from tests.orders.factories import order_checked_out, sku_for_sale
from tests.orders.stripe_events import charge_refunded_event, session_event, signed
from tests.support.moto import KmsKey, S3Bucket
from tests.support.net import free_port

pytestmark = [
    pytest.mark.django_db,
    # joserfc flags the "EdDSA" name (RFC 9864 prefers "Ed25519"); it is what the JWKS names.
    pytest.mark.filterwarnings("ignore:EdDSA is deprecated"),
]

ARTIFACT = os.urandom(200_000)
CHUNK = 16 * 1024  # small chunks: the artifact spans many of them


# --- Helpers (test_maintenance.py uses them too) -----------------------------------------------


def _deliver_event(client: Any, event: dict[str, Any]) -> None:
    body, header = signed(event, webhook_secrets()[0])
    response = client.post(
        "/marketplace/stripe/webhook",
        data=body,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=header,
    )
    assert response.status_code == 200, response.content


def process_payments() -> None:
    """Processes stored webhook events, then sends the Finance postings (the local ledger)."""
    for pk in WebhookEvent.objects.filter(
        status__in=[WebhookStatus.RECEIVED, WebhookStatus.FAILED]
    ).values_list("pk", flat=True):
        webhook_event_process(event_pk=pk)
    for pk in FinancePosting.objects.filter(status=PostingStatus.PENDING).values_list(
        "pk", flat=True
    ):
        finance_posting_send(posting_pk=pk)


def released_order(client: Any, buyer: Any, sku: Sku) -> Order:
    """An order paid through a signed webhook, posted to Finance and released for delivery."""
    order = order_checked_out(buyer, sku, key=f"key-{uuid.uuid4()}")
    _deliver_event(client, session_event("checkout.session.completed", order))
    process_payments()
    order.refresh_from_db()
    assert order.delivery_state == "released"
    return order


def refund(client: Any, order: Order) -> None:
    """Stripe reports a full refund; licensing is told (what orders sends after commit)."""
    _deliver_event(
        client,
        charge_refunded_event(order, amount_refunded=order.amount, refund_ids=[("re_1", 1)]),
    )
    process_payments()
    order.refresh_from_db()
    assert order.status == "refunded"
    order_revoke(order_id=order.pk, reason="refunded")


def delivery_actions(delivery: Delivery) -> list[str]:
    return list(
        AuditEvent.objects.filter(subject_type="delivery", subject_id=str(delivery.pk))
        .order_by("id")
        .values_list("action", flat=True)
    )


def encrypt_failures() -> float:
    """marketplace_delivery_encrypt_failures_total, all reasons together."""
    total = 0.0
    for metric in REGISTRY.collect():
        if metric.name == "marketplace_delivery_encrypt_failures":
            total += sum(s.value for s in metric.samples if s.name.endswith("_total"))
    return total


def data_key_of(delivery: Delivery) -> bytes:
    delivery.refresh_from_db()
    return data_key_unwrap(
        delivery_id=str(delivery.pk),
        wrapped=bytes(delivery.wrapped_key),
        wrapping=delivery.key_wrapping,
    )


def decrypted(delivery: Delivery) -> tuple[bytes, envelope.DecryptInfo]:
    out = io.BytesIO()
    with package_open(delivery.storage_name) as src:
        info = envelope.decrypt_stream(
            src, out, data_key=data_key_of(delivery), context=delivery_context(delivery)
        )
    return out.getvalue(), info


def stored_bytes(delivery: Delivery) -> bytes:
    with package_open(delivery.storage_name) as src:
        return src.read()


@pytest.fixture
def sku(publisher: Any, settings: Any) -> Sku:
    settings.DELIVERY_CHUNK_BYTES = CHUNK
    return sku_for_sale(publisher, price=1500, content=ARTIFACT)


@pytest.fixture
def pending(client: Any, buyer: Any, sku: Sku) -> Delivery:
    """A released order with its license issued and its delivery waiting to be packaged."""
    order = released_order(client, buyer, sku)
    result = order_fulfil(order_id=order.pk)
    assert result["license"]
    assert result["delivery"]
    return Delivery.objects.get(pk=result["delivery"])


# --- The package and its data key --------------------------------------------------------------


def test_a_released_order_gets_a_license_and_a_package_that_decrypts_to_the_artifact(
    pending: Delivery, sku: Sku
) -> None:
    order = pending.order
    assert License.objects.filter(order=order, status="active").count() == 1
    assert (pending.status, pending.attempts, pending.wrapped_key) == ("pending", 0, b"")

    assert delivery_package(delivery_id=pending.pk, actor=TEST_ACTOR) == "ready"

    pending.refresh_from_db()
    assert pending.status == DeliveryStatus.READY
    assert pending.attempts == 1
    assert pending.format == "mkpkg-v1"
    assert pending.storage_name == f"deliveries/{order.pk}/{pending.pk}.mkpkg"
    plaintext, info = decrypted(pending)
    assert plaintext == ARTIFACT
    assert info.plaintext_sha256 == pending.artifact_sha256 == sku.artifact.sha256
    assert info.package_sha256 == pending.package_sha256
    assert hashlib.sha256(stored_bytes(pending)).hexdigest() == pending.package_sha256
    assert pending.package_size == envelope.package_size(
        len(ARTIFACT), chunk_size=CHUNK, context=delivery_context(pending)
    )
    assert info.chunks == -(-len(ARTIFACT) // CHUNK)
    assert delivery_actions(pending) == ["delivery.created", "delivery.ready"]


def test_the_data_key_is_stored_only_wrapped_by_the_local_master_key(
    pending: Delivery, settings: Any
) -> None:
    delivery_package(delivery_id=pending.pk, actor=TEST_ACTOR)
    pending.refresh_from_db()
    key = data_key_of(pending)

    assert pending.key_wrapping == "local"
    assert len(key) == 32
    wrapped = bytes(pending.wrapped_key)
    assert key not in wrapped
    assert len(wrapped) == 12 + 32 + 16  # nonce, sealed key, tag
    # Nothing recorded about the delivery holds the key in the clear.
    encoded = base64.urlsafe_b64encode(key).rstrip(b"=").decode()
    for event in AuditEvent.objects.filter(subject_id=str(pending.pk)):
        assert encoded not in json.dumps(event.data)
    # Bound to this delivery: another delivery id does not unwrap it...
    with pytest.raises(DataKeyError):
        data_key_unwrap(delivery_id=str(uuid.uuid4()), wrapped=wrapped, wrapping="local")
    # ...and neither does another master key.
    settings.KEYSTORE_MASTER_KEY = base64.b64encode(os.urandom(32)).decode()
    with pytest.raises(DataKeyError, match="master key"):
        data_key_unwrap(delivery_id=str(pending.pk), wrapped=wrapped, wrapping="local")


def test_with_kms_the_data_key_is_made_and_wrapped_by_kms_bound_to_the_delivery(
    kms_key: KmsKey, pending: Delivery
) -> None:
    delivery_package(delivery_id=pending.pk, actor=TEST_ACTOR)
    pending.refresh_from_db()
    wrapped = bytes(pending.wrapped_key)

    assert pending.key_wrapping == f"kms:{kms_key.key_id}"
    plaintext, _ = decrypted(pending)
    assert plaintext == ARTIFACT
    # The wrapped blob is KMS's own: KMS opens it, given the delivery's encryption context.
    answer = kms_key.client.decrypt(
        CiphertextBlob=wrapped, EncryptionContext={"marketplace:delivery": str(pending.pk)}
    )
    assert answer["KeyId"].endswith(kms_key.key_id)
    assert answer["Plaintext"] == data_key_of(pending)
    assert answer["Plaintext"] not in wrapped
    # With another context KMS refuses, and so does the platform.
    other = str(uuid.uuid4())
    with pytest.raises(ClientError) as refused:
        kms_key.client.decrypt(
            CiphertextBlob=wrapped, EncryptionContext={"marketplace:delivery": other}
        )
    assert refused.value.response["Error"]["Code"] == "InvalidCiphertextException"
    with pytest.raises(DataKeyError, match="InvalidCiphertextException"):
        data_key_unwrap(delivery_id=other, wrapped=wrapped, wrapping=pending.key_wrapping)


# --- Twice, and after a crash ------------------------------------------------------------------


def test_packaging_twice_ends_in_one_ready_delivery_with_one_proof(pending: Delivery) -> None:
    assert delivery_package(delivery_id=pending.pk, actor=TEST_ACTOR) == "ready"
    first = Delivery.objects.get(pk=pending.pk)
    assert delivery_package(delivery_id=pending.pk, actor=TEST_ACTOR) == "ready"

    assert Delivery.objects.filter(order=pending.order).count() == 1
    again = Delivery.objects.get(pk=pending.pk)
    assert (again.attempts, again.package_sha256, again.ready_at) == (
        1,
        first.package_sha256,
        first.ready_at,
    )
    assert Proof.objects.filter(order=pending.order).count() == 1
    assert delivery_actions(pending).count("delivery.ready") == 1


def test_a_crash_between_upload_and_commit_is_finished_by_the_next_run(
    pending: Delivery, settings: Any
) -> None:
    # The upload step alone: the package is stored, nothing is recorded as delivered.
    stored = delivery_package_upload(delivery_id=pending.pk, actor=TEST_ACTOR)
    assert not isinstance(stored, str)
    first_bytes = stored_bytes_named(stored.name)
    pending.refresh_from_db()
    assert (pending.status, pending.attempts, pending.package_sha256) == ("pending", 1, "")
    assert not Proof.objects.exists()

    # While the attempt's heartbeat is fresh it may still be alive: a second run does nothing.
    assert delivery_package(delivery_id=pending.pk, actor=TEST_ACTOR) == "pending"
    pending.refresh_from_db()
    assert (pending.status, pending.attempts) == ("pending", 1)

    # The worker died there: once its heartbeat is stale the task runs again from the start.
    settings.DELIVERY_STALE_SECONDS = 0
    assert delivery_package(delivery_id=pending.pk, actor=TEST_ACTOR) == "ready"

    pending.refresh_from_db()
    assert (pending.status, pending.attempts) == ("ready", 2)
    # Same key, same derived nonce prefix: the same bytes, so the first upload is the package
    # the proof names.
    assert stored_bytes(pending) == first_bytes
    assert hashlib.sha256(first_bytes).hexdigest() == pending.package_sha256
    assert Proof.objects.get().payload["package_sha256"] == pending.package_sha256
    assert Delivery.objects.count() == 1
    folder = os.path.dirname(package_path(pending.storage_name))
    assert os.listdir(folder) == [f"{pending.pk}.mkpkg"]  # no leftover temporary file
    assert decrypted(pending)[0] == ARTIFACT


def stored_bytes_named(name: str) -> bytes:
    with package_open(name) as src:
        return src.read()


def package_path(name: str) -> str:
    from licensing.storage import _storage

    return _storage().path(name)


# --- Failures ----------------------------------------------------------------------------------


def test_an_artifact_whose_stored_bytes_changed_suspends_the_delivery_at_once(
    pending: Delivery, sku: Sku
) -> None:
    with open(default_storage.path(sku.artifact.storage_key), "r+b") as stored:
        stored.seek(1000)
        byte = stored.read(1)
        stored.seek(1000)
        stored.write(bytes([byte[0] ^ 0x01]))

    with pytest.raises(PackagingFailed, match="SHA-256"):
        delivery_package(delivery_id=pending.pk, actor=TEST_ACTOR)
    before = encrypt_failures()
    result = delivery_package_task.apply(args=[str(pending.pk)])

    assert result.get() == "suspended"
    assert encrypt_failures() == before + 1
    pending.refresh_from_db()
    assert (pending.status, pending.attempts) == ("suspended", 2)  # no retry after the task's
    assert "not the recorded" in pending.last_error
    assert not os.path.exists(package_path(f"deliveries/{pending.order_id}/{pending.pk}.mkpkg"))
    assert not Proof.objects.exists()
    event = AuditEvent.objects.get(action="delivery.suspended", subject_id=str(pending.pk))
    assert (event.data["attempts"], event.data["permanent"]) == (2, True)
    assert "SHA-256" in event.data["error"]


def storage_down(settings: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Points the S3 storage at a port nothing listens on; answers the working STORAGES.
    botocore makes one attempt per call, so the test does not sit through its backoff."""
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    working = settings.STORAGES
    default = working["default"]
    settings.STORAGES = {
        **working,
        "default": {
            **default,
            "OPTIONS": {**default["OPTIONS"], "endpoint_url": f"http://127.0.0.1:{free_port()}"},
        },
    }
    return working


@pytest.fixture
def s3_down(s3_storage: S3Bucket, settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    storage_down(settings, monkeypatch)


@pytest.fixture
def s3_pending(s3_storage: S3Bucket, client: Any, buyer: Any, publisher: Any) -> Delivery:
    """A pending delivery whose artifact is in the S3 bucket."""
    sku = sku_for_sale(publisher, price=1500, content=ARTIFACT)
    order = released_order(client, buyer, sku)
    return Delivery.objects.get(pk=order_fulfil(order_id=order.pk)["delivery"])


def test_storage_down_is_retried_by_the_task_then_the_delivery_is_suspended(
    s3_pending: Delivery, s3_down: None, settings: Any
) -> None:
    settings.DELIVERY_MAX_ATTEMPTS = 3
    before = encrypt_failures()

    result = delivery_package_task.apply(args=[str(s3_pending.pk)])

    assert result.get() == "suspended"
    assert encrypt_failures() == before + 3
    s3_pending.refresh_from_db()
    assert (s3_pending.status, s3_pending.attempts) == ("suspended", 3)
    assert "Could not connect" in s3_pending.last_error
    event = AuditEvent.objects.get(action="delivery.suspended", subject_id=str(s3_pending.pk))
    assert (event.data["attempts"], event.data["permanent"]) == (3, False)
    assert not Proof.objects.exists()


def test_a_retry_after_storage_comes_back_packages_under_the_same_key(
    s3_pending: Delivery, s3_storage: S3Bucket, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.DELIVERY_MAX_ATTEMPTS = 3
    working = storage_down(settings, monkeypatch)
    with pytest.raises(TRANSIENT) as failed:
        delivery_package(delivery_id=s3_pending.pk, actor=TEST_ACTOR)
    assert isinstance(failed.value, BotoCoreError)
    s3_pending.refresh_from_db()
    wrapped = bytes(s3_pending.wrapped_key)
    assert (s3_pending.status, s3_pending.attempts) == ("pending", 1)

    settings.STORAGES = working
    assert delivery_package_task.apply(args=[str(s3_pending.pk)]).get() == "ready"

    s3_pending.refresh_from_db()
    assert (s3_pending.status, s3_pending.attempts) == ("ready", 2)
    assert bytes(s3_pending.wrapped_key) == wrapped
    assert decrypted(s3_pending)[0] == ARTIFACT


def test_kms_down_is_retried_by_the_task_then_the_delivery_is_suspended(
    kms_key: KmsKey, pending: Delivery, settings: Any
) -> None:
    settings.DELIVERY_MAX_ATTEMPTS = 2
    settings.KMS_ENDPOINT_URL = f"http://127.0.0.1:{free_port()}"
    before = encrypt_failures()

    assert delivery_package_task.apply(args=[str(pending.pk)]).get() == "suspended"

    assert encrypt_failures() == before + 2
    pending.refresh_from_db()
    assert (pending.status, pending.attempts, pending.wrapped_key) == ("suspended", 2, b"")
    assert "KMS GenerateDataKey failed" in pending.last_error
    assert delivery_actions(pending) == ["delivery.created", "delivery.suspended"]


# --- Regeneration ------------------------------------------------------------------------------


def test_regeneration_makes_a_new_package_under_a_new_key_superseding_the_old(
    pending: Delivery, buyer_client: Any
) -> None:
    delivery_package(delivery_id=pending.pk, actor=TEST_ACTOR)
    old = Delivery.objects.get(pk=pending.pk)
    old_key = data_key_of(old)

    new = delivery_regenerate(delivery_id=old.pk, reason="buyer lost the file", actor=TEST_ACTOR)
    assert (new.status, new.supersedes_id) == ("pending", old.pk)
    assert delivery_package(delivery_id=new.pk, actor=TEST_ACTOR) == "ready"

    old.refresh_from_db()
    new.refresh_from_db()
    assert old.status == DeliveryStatus.SUPERSEDED
    assert data_key_of(new) != old_key
    assert new.storage_name != old.storage_name
    assert new.package_sha256 != old.package_sha256
    assert decrypted(new)[0] == ARTIFACT
    assert Proof.objects.filter(order=new.order).count() == 2
    event = AuditEvent.objects.get(action="delivery.regenerated")
    assert (event.subject_id, event.data["supersedes"], event.data["superseded_status"]) == (
        str(new.pk),
        str(old.pk),
        "ready",
    )
    assert event.data["reason"] == "buyer lost the file"
    # The buyer is served the new package.
    served = buyer_client.get(f"/api/v1/orders/{new.order_id}/delivery").json()
    assert served["sha256"] == new.package_sha256


def test_a_suspended_delivery_is_regenerated_into_a_ready_one(pending: Delivery, sku: Sku) -> None:
    path = default_storage.path(sku.artifact.storage_key)
    with open(path, "r+b") as stored:
        stored.write(b"\x00" if ARTIFACT[:1] != b"\x00" else b"\x01")
    assert delivery_package_task.apply(args=[str(pending.pk)]).get() == "suspended"
    with open(path, "r+b") as stored:
        stored.write(ARTIFACT[:1])  # content ops restored the artifact

    new = delivery_regenerate(delivery_id=pending.pk, reason="artifact fixed", actor=TEST_ACTOR)

    assert delivery_package(delivery_id=new.pk, actor=TEST_ACTOR) == "ready"
    assert AuditEvent.objects.get(action="delivery.regenerated").data["superseded_status"] == (
        "suspended"
    )
    assert decrypted(Delivery.objects.get(pk=new.pk))[0] == ARTIFACT


def test_regenerating_a_refunded_orders_delivery_is_refused(pending: Delivery, client: Any) -> None:
    delivery_package(delivery_id=pending.pk, actor=TEST_ACTOR)
    refund(client, pending.order)
    pending.refresh_from_db()
    assert pending.status == DeliveryStatus.WITHDRAWN
    events = AuditEvent.objects.count()

    with pytest.raises(Conflict, match="refunded"):
        delivery_regenerate(delivery_id=pending.pk, reason="please", actor=TEST_ACTOR)

    assert Delivery.objects.count() == 1
    assert AuditEvent.objects.count() == events
    # And a withdrawn delivery is not packaged again.
    assert delivery_package(delivery_id=pending.pk, actor=TEST_ACTOR) == "withdrawn"


# --- The proof ---------------------------------------------------------------------------------


def test_the_proof_fingerprint_of_a_fixed_payload_is_fixed() -> None:
    order = Order(
        id=uuid.UUID("3f0c6a52-8d1e-4b7a-9c35-0d2e6f41a7b9"),
        sku_slug="acme-toolkit",
        sku_version="1.2.0",
    )
    payload = proof_payload(
        order=order,
        delivery_id="b71e0f9a-52c4-4e63-8a0d-6c9f3e2d1a58",
        artifact_sha256=hashlib.sha256(b"artifact").hexdigest(),
        package_sha256=hashlib.sha256(b"package").hexdigest(),
        ledger_reference="LEDGER-000123",
        delivered_at=datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
        signer_kid="license-20250102-0a1b2c3d",
    )
    # The documented canonical JSON (marketplace.canonical: keys sorted, no whitespace, UTF-8).
    assert canonical_json(payload) == (
        b'{"artifact_sha256":"c7c5c1d70c5dec4416ab6158afd0b223ef40c29b1dc1f97ed9428b94d4cadb1c",'
        b'"aud":"marketplace:delivery-proof",'
        b'"delivered_at":"2025-01-02T03:04:05Z",'
        b'"delivery":"b71e0f9a-52c4-4e63-8a0d-6c9f3e2d1a58",'
        b'"iss":"marketplace:delivery",'
        b'"ledger_reference":"LEDGER-000123",'
        b'"order":"3f0c6a52-8d1e-4b7a-9c35-0d2e6f41a7b9",'
        b'"package_sha256":"bc4a71180870f7945155fbb02f4b0a2e3faa2a62d6d31b7039013055ed19869a",'
        b'"signer_kid":"license-20250102-0a1b2c3d","sku":"acme-toolkit","sku_version":"1.2.0"}'
    )
    # Computed once with hashlib.sha256 over the bytes above; hard-coded so that any change to
    # the payload's fields or their canonical form shows up here.
    assert proof_fingerprint(payload) == (
        "7f4eae6aabb6a8838a373353abcfd6a7179c74e3771bbd7ccc14b41a922dfa4d"
    )


def test_the_proof_binds_order_sku_artifact_and_package_and_verifies_against_the_jwks(
    pending: Delivery, client: Any, buyer_client: Any
) -> None:
    delivery_package(delivery_id=pending.pk, actor=TEST_ACTOR)
    pending.refresh_from_db()
    proof = Proof.objects.get(delivery=pending)
    order = pending.order
    posting = FinancePosting.objects.get(order=order, kind="sale")

    assert proof.payload == {
        "iss": "marketplace:delivery",
        "aud": "marketplace:delivery-proof",
        "order": str(order.pk),
        "delivery": str(pending.pk),
        "sku": order.sku_slug,
        "sku_version": order.sku_version,
        "artifact_sha256": pending.artifact_sha256,
        "package_sha256": pending.package_sha256,
        "ledger_reference": posting.ledger_reference,
        "delivered_at": pending.ready_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "signer_kid": proof.signer_kid,
    }
    assert posting.ledger_reference
    assert proof.fingerprint == hashlib.sha256(canonical_json(proof.payload)).hexdigest()
    assert abs(pending.ready_at - datetime.now(tz=UTC)) < timedelta(minutes=1)

    document = client.get("/.well-known/jwks.json").json()
    verified = jws.deserialize_compact(
        proof.token, KeySet.import_key_set(document), algorithms=["EdDSA", "ES256"]
    )
    assert json.loads(verified.payload) == proof.payload
    assert verified.protected["kid"] == proof.signer_kid
    assert verified.protected["typ"] == "mkp-proof+jws"
    # The buyer reaches it from the delivery, and so does nobody else.
    served = buyer_client.get(f"/api/v1/orders/{order.pk}/delivery").json()
    assert served["proof"] == str(proof.pk)
    shown = buyer_client.get(f"/api/v1/proofs/{proof.pk}").json()
    assert shown["fingerprint"] == proof.fingerprint


# --- S3 with object lock ----------------------------------------------------------------------


def test_on_s3_the_package_is_locked_with_metadata_and_sse_kms_and_downloads_presigned(
    s3_pending: Delivery,
    s3_storage: S3Bucket,
    kms_key: KmsKey,
    settings: Any,
    buyer_client: Any,
) -> None:
    settings.S3_KMS_KEY_ID = kms_key.key_id
    settings.DELIVERY_RETENTION_DAYS = 30
    s3 = s3_storage.client

    assert delivery_package(delivery_id=s3_pending.pk, actor=TEST_ACTOR) == "ready"

    s3_pending.refresh_from_db()
    key = f"deliveries/{s3_pending.order_id}/{s3_pending.pk}.mkpkg"
    assert s3_pending.storage_name == key
    head = s3.head_object(Bucket=s3_storage.name, Key=key)
    assert head["ObjectLockMode"] == "COMPLIANCE"
    retain = head["ObjectLockRetainUntilDate"] - datetime.now(tz=UTC)
    assert timedelta(days=29) < retain <= timedelta(days=30)
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["SSEKMSKeyId"].endswith(kms_key.key_id)
    proof = Proof.objects.get(delivery=s3_pending)
    sku = s3_pending.order.sku
    assert head["Metadata"] == {
        "delivery": str(s3_pending.pk),
        "order": str(s3_pending.order_id),
        "format": "mkpkg-v1",
        "key-wrapping": f"kms:{kms_key.key_id}",
        "package-sha256": s3_pending.package_sha256,
        "artifact-sha256": s3_pending.artifact_sha256,
        "proof-signer-kid": proof.signer_kid,
        "manifest-signature-sha256": hashlib.sha256(sku.manifest_signature.encode()).hexdigest(),
    }
    body = s3.get_object(Bucket=s3_storage.name, Key=key)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == s3_pending.package_sha256

    # Object lock: the delivered version cannot be deleted.
    [version] = s3.list_object_versions(Bucket=s3_storage.name, Prefix="deliveries/")["Versions"]
    with pytest.raises(ClientError) as refused:
        s3.delete_object(Bucket=s3_storage.name, Key=key, VersionId=version["VersionId"])
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    assert s3.head_object(Bucket=s3_storage.name, Key=key, VersionId=version["VersionId"])

    # The buyer's presigned link downloads that package from the bucket.
    served = buyer_client.get(f"/api/v1/orders/{s3_pending.order_id}/delivery")
    assert served.status_code == 200, served.content
    url = served.json()["download_url"]
    assert url.startswith(f"{s3_storage.endpoint}/{s3_storage.name}/{key}?")
    downloaded = requests.get(url, timeout=10)
    assert downloaded.status_code == 200
    assert downloaded.content == body
    out = io.BytesIO()
    envelope.decrypt_stream(
        io.BytesIO(downloaded.content),
        out,
        data_key=b64url_decode(served.json()["decryption_key"]),
    )
    assert out.getvalue() == ARTIFACT


def test_on_s3_a_crash_after_upload_leaves_one_version_of_the_package(
    s3_pending: Delivery, s3_storage: S3Bucket, settings: Any
) -> None:
    stored = delivery_package_upload(delivery_id=s3_pending.pk, actor=TEST_ACTOR)
    assert not isinstance(stored, str)

    settings.DELIVERY_STALE_SECONDS = 0  # the worker died after the upload
    assert delivery_package(delivery_id=s3_pending.pk, actor=TEST_ACTOR) == "ready"

    s3_pending.refresh_from_db()
    versions = s3_storage.client.list_object_versions(Bucket=s3_storage.name, Prefix="deliveries/")[
        "Versions"
    ]
    assert [v["Key"] for v in versions] == [s3_pending.storage_name]
    body = s3_storage.client.get_object(Bucket=s3_storage.name, Key=s3_pending.storage_name)[
        "Body"
    ].read()
    assert hashlib.sha256(body).hexdigest() == s3_pending.package_sha256
    assert (Delivery.objects.count(), Proof.objects.count()) == (1, 1)
