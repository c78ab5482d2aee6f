"""A buyer's purchase from checkout to a decrypted artifact, and its refund, across the real
processes: the API and the webhook endpoint over HTTP (live_server), Stripe's stand-in, a
real Celery worker on Redis, PostgreSQL, and moto's S3 (object-lock bucket) and KMS. The buyer
decrypts with `python -m licensing.decrypt` in a process of its own."""

import hashlib
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
from botocore.exceptions import ClientError

from audit.models import AuditEvent
from audit.sealer import seal_all
from audit.verify import chain_verify
from licensing.models import Delivery, DeliveryStatus, License, LicenseStatus, Proof
from marketplace.actors import Actor
from orders.models import Order
from orders.services import order_refund
from tests.orders.factories import sku_for_sale
from tests.orders.stripe_events import charge_refunded_event, envelope, signed
from tests.support.moto import KmsKey, S3Bucket
from tests.support.stripe_api import StripeApiServer
from tests.support.worker import BASE_DIR, WorkerProcess, wait_until

pytestmark = [pytest.mark.worker, pytest.mark.s3, pytest.mark.django_db(transaction=True)]

WEBHOOK_PATH = "/marketplace/stripe/webhook"
ARTIFACT = bytes(range(256)) * 3000 + b"the end"  # ~750 KiB: several chunks
CHUNK = 64 * 1024


def post_event(base_url: str, event: dict[str, Any], secret: str) -> requests.Response:
    """Delivers `event` the way Stripe does: the JSON body, signed, over HTTP."""
    body, header = signed(event, secret)
    return requests.post(
        base_url + WEBHOOK_PATH,
        data=body,
        headers={"Content-Type": "application/json", "Stripe-Signature": header},
        timeout=30,
    )


def decrypt(package: Path, key: str, out: Path) -> subprocess.CompletedProcess[str]:
    """What the buyer runs, in a process of its own (no Django settings in its environment)."""
    return subprocess.run(
        [sys.executable, "-m", "licensing.decrypt", str(package), "--key", key, "--out", str(out)],
        cwd=BASE_DIR,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def delivery_keys(s3_storage: S3Bucket, kms_key: KmsKey, settings: Any) -> KmsKey:
    """Packages go to the object-lock bucket with SSE-KMS; KMS makes their data keys. Listed
    before `celery_worker`, so the worker is started with these settings."""
    settings.S3_KMS_KEY_ID = kms_key.key_id
    settings.DELIVERY_RETENTION_DAYS = 1
    settings.DELIVERY_CHUNK_BYTES = CHUNK
    return kms_key


def test_checkout_webhook_license_package_download_decrypt_then_refund_revokes(
    stripe_api: StripeApiServer,
    delivery_keys: KmsKey,
    s3_bucket: S3Bucket,
    celery_worker: WorkerProcess,
    live_server: Any,
    buyer_http: requests.Session,
    publisher: Any,
    finance_staff: Any,
    tmp_path: Path,
) -> None:
    base = live_server.url
    sku = sku_for_sale(publisher, price=4900, currency="EUR", content=ARTIFACT)
    artifact_sha256 = hashlib.sha256(ARTIFACT).hexdigest()
    assert sku.artifact.sha256 == artifact_sha256

    # Checkout over HTTP, payment on Stripe's page, the signed webhook over HTTP.
    created = buyer_http.post(
        f"{base}/api/v1/checkout",
        json={"sku": sku.slug},
        headers={"Idempotency-Key": f"buy-{uuid.uuid4()}"},
    )
    assert created.status_code == 201, created.text
    order_id = created.json()["order"]["id"]
    [session] = stripe_api.sessions.values()
    completed = envelope("checkout.session.completed", stripe_api.pay(session["id"]))
    answer = post_event(base, completed, stripe_api.webhook_secret)
    assert answer.status_code == 200, answer.text

    # The worker: paid, Finance posted, released; order_fulfil issues the license and makes
    # the delivery; delivery_package packages it.
    wait_until(
        lambda: Delivery.objects.filter(order_id=order_id, status=DeliveryStatus.READY).exists(),
        timeout=60,
        worker=celery_worker,
    )
    log = celery_worker.log()
    assert "licensing.tasks.order_fulfil" in log
    assert "licensing.tasks.delivery_package" in log
    delivery = Delivery.objects.get(order_id=order_id)
    assert delivery.key_wrapping == f"kms:{delivery_keys.key_id}"
    assert (Delivery.objects.count(), Proof.objects.count(), License.objects.count()) == (1, 1, 1)
    head = s3_bucket.client.head_object(Bucket=s3_bucket.name, Key=delivery.storage_name)
    assert head["ObjectLockMode"] == "COMPLIANCE"
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["Metadata"]["package-sha256"] == delivery.package_sha256

    shown = buyer_http.get(f"{base}/api/v1/orders/{order_id}").json()
    assert (shown["status"], shown["delivery"]) == ("paid", "released")
    assert shown["proof"] == str(Proof.objects.get().pk)

    # The buyer asks for the package, downloads it from the bucket and decrypts it.
    served = buyer_http.get(f"{base}/api/v1/orders/{order_id}/delivery")
    assert served.status_code == 200, served.text
    access = served.json()
    assert (access["sha256"], access["format"]) == (delivery.package_sha256, "mkpkg-v1")
    assert access["artifact_sha256"] == artifact_sha256
    downloaded = requests.get(access["download_url"], timeout=30)
    assert downloaded.status_code == 200
    package = tmp_path / "package.mkpkg"
    package.write_bytes(downloaded.content)
    assert hashlib.sha256(downloaded.content).hexdigest() == access["sha256"]

    out = tmp_path / "artifact.bin"
    ran = decrypt(package, access["decryption_key"], out)
    assert ran.returncode == 0, ran.stderr
    assert hashlib.sha256(out.read_bytes()).hexdigest() == artifact_sha256
    assert ran.stdout.strip() == f"{artifact_sha256}  {out}"

    # A flipped byte and a cut package fail, and leave no output.
    tampered = tmp_path / "tampered.mkpkg"
    content = bytearray(downloaded.content)
    content[len(content) // 2] ^= 0x20
    tampered.write_bytes(bytes(content))
    truncated = tmp_path / "truncated.mkpkg"
    final_chunk = len(ARTIFACT) % CHUNK + 16  # the final chunk's plaintext and its tag
    truncated.write_bytes(downloaded.content[:-final_chunk])  # dropped at a chunk boundary
    for bad, reason in ((tampered, "failed authentication"), (truncated, "truncated")):
        target = tmp_path / f"{bad.stem}.out"
        ran = decrypt(bad, access["decryption_key"], target)
        assert ran.returncode == 1, ran.stderr
        assert reason in ran.stderr
        assert not target.exists()
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(f".{target.name}")] == []

    # The license verifies, online and through the API.
    license = buyer_http.get(f"{base}/api/v1/orders/{order_id}/license").json()
    assert license["status"] == "active"
    verdict = requests.post(
        f"{base}/api/v1/licenses/verify", json={"token": license["token"]}, timeout=30
    ).json()
    assert (verdict["valid"], verdict["reason"]) == (True, "valid")

    # A refund: Finance refunds through Stripe, Stripe reports charge.refunded.
    refund = order_refund(
        order_id=order_id,
        amount=None,
        reason="not what I needed",
        actor=Actor.of_user(finance_staff),
    )
    refunded = charge_refunded_event(
        Order.objects.get(pk=order_id),
        amount_refunded=4900,
        refund_ids=[(refund.gateway_refund_id, 4900)],
    )
    assert post_event(base, refunded, stripe_api.webhook_secret).status_code == 200
    wait_until(
        lambda: (
            License.objects.filter(order_id=order_id, status=LicenseStatus.REVOKED).exists()
            and Delivery.objects.filter(order_id=order_id, status=DeliveryStatus.WITHDRAWN).exists()
        ),
        timeout=60,
        worker=celery_worker,
    )
    assert "licensing.tasks.order_revoke" in celery_worker.log()
    verdict = requests.post(
        f"{base}/api/v1/licenses/verify", json={"token": license["token"]}, timeout=30
    ).json()
    assert (verdict["valid"], verdict["reason"]) == (False, "revoked")
    gone = buyer_http.get(f"{base}/api/v1/orders/{order_id}/delivery")
    assert gone.status_code == 410, gone.text
    assert gone.headers["Content-Type"].startswith("application/problem+json")

    # The delivered package stays in the bucket, locked: a refund does not (and cannot) delete
    # the version that was delivered.
    [version] = s3_bucket.client.list_object_versions(Bucket=s3_bucket.name, Prefix="deliveries/")[
        "Versions"
    ]
    with pytest.raises(ClientError):
        s3_bucket.client.delete_object(
            Bucket=s3_bucket.name, Key=delivery.storage_name, VersionId=version["VersionId"]
        )
    actions = list(
        AuditEvent.objects.filter(subject_type="delivery", subject_id=str(delivery.pk))
        .order_by("id")
        .values_list("action", flat=True)
    )
    assert actions == ["delivery.created", "delivery.ready", "delivery.withdrawn"]
    seal_all()
    report = chain_verify()
    assert report.ok, report.summary()
