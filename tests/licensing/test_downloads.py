"""The buyer's package: GET /api/v1/orders/{id}/delivery, the download link it hands out
(a signed platform URL for local files, a presigned URL on S3), its limits and log, decryption
with the data key or with the buyer's own X25519 key, and PUT /api/v1/me/delivery-key."""

import hashlib
import io
import logging
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from django.conf import settings
from django.core import signing
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from rest_framework.test import APIClient

from accounts.services import api_token_issue
from audit.models import AuditEvent
from licensing import envelope
from licensing.models import (
    BuyerDeliveryKey,
    Delivery,
    DeliveryStatus,
    DownloadLog,
    DownloadSession,
)
from licensing.sealing import b64url_decode, b64url_encode, private_key_pem, public_key_text
from licensing.services import delivery_regenerate, order_fulfil
from licensing.services.deliveries import delivery_context, delivery_package
from licensing.services.fulfilment import LICENSING_WORKER
from orders.services import order_delivery_hold
from tests.catalog.factories import TEST_ACTOR
from tests.licensing.factories import (
    ARTIFACT,
    order_delivered,
    order_disputed,
    order_paid,
    order_refunded,
    order_revoked,
)
from tests.orders.factories import order_checked_out, sku_for_sale
from tests.support.net import free_port

pytestmark = pytest.mark.django_db

REPO = Path(__file__).resolve().parents[2]
KEY_URL = "/api/v1/me/delivery-key"


def delivery_url(order) -> str:
    return f"/api/v1/orders/{order.pk}/delivery"


def client_of(user) -> APIClient:
    _, token = api_token_issue(email=user.email, actor=TEST_ACTOR)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def download(client, url: str, **extra):
    """Follows a platform download link the way a browser would: no credentials."""
    return client.get(urlsplit(url).path, **extra)


def body_of(response) -> bytes:
    return b"".join(response.streaming_content)


def decrypt(package: bytes, key: bytes, delivery: Delivery) -> bytes:
    out = io.BytesIO()
    envelope.decrypt_stream(
        io.BytesIO(package), out, data_key=key, context=delivery_context(delivery)
    )
    return out.getvalue()


@pytest.fixture(autouse=True)
def _small_chunks(settings) -> None:
    settings.DELIVERY_CHUNK_BYTES = 16 * 1024  # several chunks for the ~100 KiB artifact


# --- The delivery and its decryption -----------------------------------------------------------


def test_the_buyer_downloads_and_decrypts_the_artifact(buyer, buyer_client, client):
    delivered = order_delivered(buyer)

    before = timezone.now().replace(microsecond=0)
    response = buyer_client.get(delivery_url(delivered.order))
    after = timezone.now()

    assert response.status_code == 200, response.content
    assert response["Cache-Control"] == "no-store"
    body = response.json()
    # The link lasts MARKETPLACE_DOWNLOAD_LINK_SECONDS (900 by default) from the answer.
    expires_at = parse_datetime(body["expires_at"])
    assert before + timedelta(seconds=900) <= expires_at <= after + timedelta(seconds=900)
    assert body["format"] == "mkpkg-v1"
    assert body["sha256"] == delivered.delivery.package_sha256
    assert body["artifact_sha256"] == hashlib.sha256(ARTIFACT).hexdigest()
    assert body["wrapped_key"] is None
    assert body["downloads_left"] == 10
    assert body["proof"] is not None
    assert body["download_url"].startswith(f"{settings.PUBLIC_URL}/marketplace/deliveries/")
    key = b64url_decode(body["decryption_key"])
    assert len(key) == 32
    assert b64url_encode(key) == body["decryption_key"]

    downloaded = download(client, body["download_url"])
    assert downloaded.status_code == 200
    assert downloaded["X-Package-SHA256"] == body["sha256"]
    assert downloaded["Cache-Control"] == "no-store"
    package = body_of(downloaded)
    assert hashlib.sha256(package).hexdigest() == body["sha256"]
    assert decrypt(package, key, delivered.delivery) == ARTIFACT


def test_a_registered_x25519_key_gets_the_key_sealed_and_the_cli_opens_it(
    buyer, buyer_client, client, tmp_path
):
    identity = x25519.X25519PrivateKey.generate()
    registered = buyer_client.put(
        KEY_URL, {"public_key": public_key_text(identity.public_key())}, format="json"
    )
    assert registered.status_code == 200, registered.content
    assert buyer_client.get(KEY_URL).json()["public_key"] == registered.json()["public_key"]
    delivered = order_delivered(buyer)

    body = buyer_client.get(delivery_url(delivered.order)).json()

    assert body["decryption_key"] is None
    assert body["wrapped_key"]
    package = tmp_path / "package.mkpkg"
    package.write_bytes(body_of(download(client, body["download_url"])))
    identity_file = tmp_path / "identity.pem"
    identity_file.write_bytes(private_key_pem(identity))
    out = tmp_path / "artifact.bin"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "licensing.decrypt",
            str(package),
            "--identity",
            str(identity_file),
            "--wrapped-key",
            body["wrapped_key"],
            "--expect-sha256",
            body["artifact_sha256"],
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == ARTIFACT
    # Another identity cannot open the sealed key.
    stranger = tmp_path / "stranger.pem"
    stranger.write_bytes(private_key_pem(x25519.X25519PrivateKey.generate()))
    refused = subprocess.run(
        [
            sys.executable,
            "-m",
            "licensing.decrypt",
            str(package),
            "--identity",
            str(stranger),
            "--wrapped-key",
            body["wrapped_key"],
            "--out",
            str(tmp_path / "nope.bin"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 1
    assert not (tmp_path / "nope.bin").exists()

    # Forgetting the key brings the plain data key back.
    assert buyer_client.delete(KEY_URL).status_code == 204
    assert buyer_client.get(KEY_URL).status_code == 404
    again = buyer_client.get(delivery_url(delivered.order)).json()
    assert again["wrapped_key"] is None
    plain_key = b64url_decode(again["decryption_key"])
    assert decrypt(package.read_bytes(), plain_key, delivered.delivery) == ARTIFACT
    actions = list(
        AuditEvent.objects.filter(subject_type="buyer", subject_id=str(buyer.uuid))
        .order_by("id")
        .values_list("action", flat=True)
    )
    assert actions == ["delivery_key.registered", "delivery_key.deleted"]


def test_the_same_delivery_key_again_writes_nothing(buyer, buyer_client):
    identity = x25519.X25519PrivateKey.generate()
    text = public_key_text(identity.public_key())
    first = buyer_client.put(KEY_URL, {"public_key": text}, format="json")
    assert first.status_code == 200, first.content
    stored = BuyerDeliveryKey.objects.get(buyer=buyer)

    for same in (text, first.json()["public_key"], f"  {text}\n"):
        again = buyer_client.put(KEY_URL, {"public_key": same}, format="json")
        assert again.status_code == 200, again.content
        assert again.json() == first.json()
    assert BuyerDeliveryKey.objects.get(buyer=buyer).updated_at == stored.updated_at

    other = public_key_text(x25519.X25519PrivateKey.generate().public_key())
    assert buyer_client.put(KEY_URL, {"public_key": other}, format="json").status_code == 200
    actions = list(
        AuditEvent.objects.filter(subject_type="buyer", subject_id=str(buyer.uuid))
        .order_by("id")
        .values_list("action", flat=True)
    )
    assert actions == ["delivery_key.registered", "delivery_key.replaced"]


def _ed25519_pem() -> str:
    return (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"public_key": "not a key"}, "public_key"),
        ({"public_key": b64url_encode(b"\x01" * 31)}, "public_key"),
        ({"public_key": b64url_encode(b"\x00" * 32)}, "public_key"),  # a low-order point
        ({"public_key": _ed25519_pem()}, "public_key"),
        ({"public_key": ""}, "public_key"),
        ({"public_key": 42}, "public_key"),
        ({}, "public_key"),
        ({"public_key": b64url_encode(b"\x09" + b"\x00" * 31), "kid": "x"}, "kid"),
        (["x"], "non_field_errors"),
    ],
)
def test_a_bad_delivery_key_is_refused_and_nothing_is_stored(buyer, buyer_client, body, field):
    events = AuditEvent.objects.count()
    response = buyer_client.put(KEY_URL, body, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()["errors"]
    assert not BuyerDeliveryKey.objects.exists()
    assert AuditEvent.objects.count() == events


# --- Who gets what, and when -------------------------------------------------------------------


def test_another_buyers_delivery_is_not_found(buyer, other_buyer):
    delivered = order_delivered(other_buyer)
    response = client_of(buyer).get(delivery_url(delivered.order))
    assert response.status_code == 404
    assert not DownloadLog.objects.exists()
    assert APIClient().get(delivery_url(delivered.order)).status_code == 401


def test_nothing_to_download_before_the_package_is_ready(buyer, buyer_client):
    pending = order_checked_out(buyer, sku_for_sale())
    response = buyer_client.get(delivery_url(pending))
    assert (response.status_code, response.json()["delivery"]) == (409, "not_paid")

    paid = order_paid(buyer)
    response = buyer_client.get(delivery_url(paid))
    assert (response.status_code, response.json()["delivery"]) == (409, "pending")

    order_fulfil(order_id=paid.pk)
    response = buyer_client.get(delivery_url(paid))
    assert (response.status_code, response.json()["delivery"]) == (409, "pending")
    assert Delivery.objects.get(order=paid).status == DeliveryStatus.PENDING


def test_a_held_order_waits(buyer, buyer_client, client):
    delivered = order_delivered(buyer)
    link = buyer_client.get(delivery_url(delivered.order)).json()["download_url"]
    order_delivery_hold(order_id=delivered.order.pk, reason="checking", actor=TEST_ACTOR)

    response = buyer_client.get(delivery_url(delivered.order))
    assert (response.status_code, response.json()["delivery"]) == (409, "manual")
    assert download(client, link).status_code == 409
    assert Delivery.objects.get(pk=delivered.delivery.pk).downloads == 0


@pytest.mark.parametrize(
    ("ending", "reason"), [(order_refunded, "refunded"), (order_disputed, "disputed")]
)
def test_a_refunded_or_disputed_order_is_gone(buyer, buyer_client, client, ending, reason):
    delivered = order_delivered(buyer)
    link = buyer_client.get(delivery_url(delivered.order)).json()["download_url"]
    ending(delivered.order)

    # Before licensing's revocation has run, and after it.
    for _ in range(2):
        response = buyer_client.get(delivery_url(delivered.order))
        assert response.status_code == 410, response.content
        assert response["Content-Type"] == "application/problem+json"
        assert response.json()["reason"] == reason
        assert "decryption_key" not in response.json()
        gone = download(client, link)
        assert (gone.status_code, gone.json()["reason"]) == (410, reason)
        order_revoked(delivered.order, reason)
    assert Delivery.objects.get(pk=delivered.delivery.pk).status == DeliveryStatus.WITHDRAWN
    assert DownloadLog.objects.filter(kind="download").count() == 0


# --- The link: counted, logged, limited, expiring, unforgeable ---------------------------------


def next_link(buyer_client, order) -> str:
    """A link of its own: those handed out so far are aged past half their lifetime (still
    valid), so the API hands out a new one instead of the one still open."""
    left = timedelta(seconds=settings.DOWNLOAD_LINK_SECONDS // 2 - 5)
    DownloadSession.objects.filter(delivery__order=order).update(expires_at=timezone.now() + left)
    response = buyer_client.get(delivery_url(order))
    assert response.status_code == 200, response.content
    return response.json()["download_url"]


def test_each_link_is_counted_once_and_logged_until_the_limit(
    buyer, buyer_client, client, settings
):
    settings.DOWNLOAD_LIMIT = 3
    delivered = order_delivered(buyer)
    first = buyer_client.get(delivery_url(delivered.order)).json()["download_url"]
    # Asking again while the link is young hands out the same link.
    assert buyer_client.get(delivery_url(delivered.order)).json()["download_url"] == first

    links = [first, next_link(buyer_client, delivered.order)]
    for number, link in enumerate(links, start=1):
        for _ in range(2):  # a second GET of the same link is free
            response = download(
                client, link, REMOTE_ADDR=f"203.0.113.{number}", HTTP_USER_AGENT=f"curl/8.{number}"
            )
            assert response.status_code == 200
            body_of(response)
        assert Delivery.objects.get(pk=delivered.delivery.pk).downloads == number
    # Two links handed out while one download is left: whichever is used first takes it.
    third, fourth = (
        next_link(buyer_client, delivered.order),
        next_link(buyer_client, delivered.order),
    )
    assert body_of(download(client, third, REMOTE_ADDR="203.0.113.3", HTTP_USER_AGENT="curl/8.3"))
    assert Delivery.objects.get(pk=delivered.delivery.pk).downloads == 3

    log = list(DownloadLog.objects.order_by("at", "id").values("kind", "ip", "user_agent", "at"))
    assert [(row["kind"], row["ip"], row["user_agent"]) for row in log] == [
        ("download", "203.0.113.1", "curl/8.1"),
        ("download", "203.0.113.2", "curl/8.2"),
        ("download", "203.0.113.3", "curl/8.3"),
    ]
    assert all(row["at"] is not None for row in log)

    over = download(client, fourth)
    assert over.status_code == 410
    assert over.json()["reason"] == "limit"
    # Neither the unused link nor a new one is handed out: the newest counted link still open
    # is, however little time it has left, for it to be resumed.
    resumable = buyer_client.get(delivery_url(delivered.order))
    assert resumable.status_code == 200, resumable.content
    assert (resumable.json()["download_url"], resumable.json()["downloads_left"]) == (third, 0)
    # Once every counted link has expired, nothing is.
    opened = dict(DownloadSession.objects.values_list("pk", "expires_at"))
    DownloadSession.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    refused = buyer_client.get(delivery_url(delivered.order))
    assert (refused.status_code, refused.json()["reason"]) == (410, "limit")
    for pk, expires_at in opened.items():  # open again, to see them superseded below
        DownloadSession.objects.filter(pk=pk).update(expires_at=expires_at)
    assert Delivery.objects.get(pk=delivered.delivery.pk).downloads == 3
    assert DownloadLog.objects.count() == 3
    assert DownloadSession.objects.filter(delivery=delivered.delivery).count() == 4

    # Support regenerates it: a new package, a new count, and the old link is dead.
    new = delivery_regenerate(delivery_id=delivered.delivery.pk, reason="limit", actor=TEST_ACTOR)
    assert delivery_package(delivery_id=new.pk, actor=LICENSING_WORKER) == "ready"
    fresh = buyer_client.get(delivery_url(delivered.order)).json()
    assert fresh["downloads_left"] == 3
    assert download(client, fresh["download_url"]).status_code == 200
    old = download(client, first)
    assert (old.status_code, old.json()["reason"]) == (410, "superseded")


def test_the_log_names_the_client_behind_the_trusted_proxy(buyer, buyer_client, client, settings):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}
    delivered = order_delivered(buyer)
    link = buyer_client.get(delivery_url(delivered.order)).json()["download_url"]

    response = download(
        client,
        link,
        REMOTE_ADDR="10.0.0.2",  # the load balancer
        HTTP_X_FORWARDED_FOR="192.0.2.66, 198.51.100.23",  # the client's say, then the balancer's
    )

    assert response.status_code == 200
    assert DownloadLog.objects.get().ip == "198.51.100.23"


def test_without_trusted_proxies_the_log_names_the_connection(buyer, buyer_client, client):
    delivered = order_delivered(buyer)
    link = buyer_client.get(delivery_url(delivered.order)).json()["download_url"]

    download(client, link, REMOTE_ADDR="198.51.100.23", HTTP_X_FORWARDED_FOR="192.0.2.66")

    assert DownloadLog.objects.get().ip == "198.51.100.23"


def test_an_expired_link_is_gone(buyer, buyer_client, client, settings):
    delivered = order_delivered(buyer)
    settings.DOWNLOAD_LINK_SECONDS = 0
    link = buyer_client.get(delivery_url(delivered.order)).json()["download_url"]

    response = download(client, link)
    assert (response.status_code, response.json()["reason"]) == (410, "expired")
    assert Delivery.objects.get(pk=delivered.delivery.pk).downloads == 0
    assert not DownloadLog.objects.exists()


def test_a_forged_link_is_not_found(buyer, buyer_client, client):
    delivered = order_delivered(buyer)
    link = buyer_client.get(delivery_url(delivered.order)).json()["download_url"]
    token = urlsplit(link).path.rsplit("/", 1)[1]
    forged = [
        token[:-2] + ("AA" if token[-2:] != "AA" else "BB"),
        signing.dumps({"d": str(delivered.delivery.pk), "e": 4102444800}, salt="another-salt"),
        signing.dumps({"d": str(delivered.delivery.pk), "e": 4102444800}, key="x" * 50),
        "nothing",
    ]
    for bad in forged:
        response = client.get(f"/marketplace/deliveries/{bad}")
        assert response.status_code == 404, bad
    assert Delivery.objects.get(pk=delivered.delivery.pk).downloads == 0


def test_the_decryption_key_never_reaches_the_logs(buyer, buyer_client, client, caplog):
    delivered = order_delivered(buyer)
    caplog.set_level(logging.DEBUG)
    for name in ("django", "django.request", "licensing", "marketplace", "orders", "audit"):
        caplog.set_level(logging.DEBUG, logger=name)

    body = buyer_client.get(delivery_url(delivered.order)).json()
    body_of(download(client, body["download_url"]))
    buyer_client.get(delivery_url(delivered.order))

    key = body["decryption_key"]
    raw = b64url_decode(key)
    logged = caplog.text + "".join(repr(record.args) for record in caplog.records)
    assert key not in logged
    assert raw.hex() not in logged
    assert repr(raw) not in logged
    for event in AuditEvent.objects.all():
        assert key not in str(event.data)


# --- S3: presigned links, counted once per link handed out -------------------------------------


@pytest.mark.s3
def test_on_s3_the_same_link_handed_out_twice_counts_once(
    buyer, buyer_client, s3_storage, settings
):
    settings.DOWNLOAD_LIMIT = 2
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}
    delivered = order_delivered(buyer)
    ask = {
        "REMOTE_ADDR": "10.0.0.2",
        "HTTP_X_FORWARDED_FOR": "198.51.100.4",
        "HTTP_USER_AGENT": "agent/1",
    }

    body = buyer_client.get(delivery_url(delivered.order), **ask).json()
    again = buyer_client.get(delivery_url(delivered.order), **ask).json()

    assert body["download_url"].startswith(s3_storage.endpoint)
    assert (body["downloads_left"], again["downloads_left"]) == (1, 1)
    assert again["expires_at"] == body["expires_at"]
    assert Delivery.objects.get(pk=delivered.delivery.pk).downloads == 1
    log = DownloadLog.objects.get()
    assert (log.kind, log.ip, log.user_agent) == ("link", "198.51.100.4", "agent/1")
    for url in (body["download_url"], again["download_url"]):
        package = requests.get(url, timeout=10).content
        assert hashlib.sha256(package).hexdigest() == body["sha256"]
    assert decrypt(package, b64url_decode(body["decryption_key"]), delivered.delivery) == ARTIFACT
    # The bucket answers ranges itself, so an aborted transfer resumes on the same link.
    tail = requests.get(again["download_url"], headers={"Range": "bytes=-100"}, timeout=10)
    assert (tail.status_code, tail.content) == (206, package[-100:])

    # A link past half its lifetime is not handed out again: the next one is counted.
    assert next_link(buyer_client, delivered.order).startswith(s3_storage.endpoint)
    assert Delivery.objects.get(pk=delivered.delivery.pk).downloads == 2
    assert DownloadLog.objects.count() == 2
    # At the limit, the newest counted link still open is handed out again (a URL for its last
    # seconds), at no cost; once it has expired, nothing is.
    DownloadSession.objects.update(expires_at=timezone.now() + timedelta(seconds=5))
    resumable = buyer_client.get(delivery_url(delivered.order))
    assert resumable.status_code == 200, resumable.content
    assert resumable.json()["downloads_left"] == 0
    assert DownloadSession.objects.count() == 2
    DownloadSession.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    over = buyer_client.get(delivery_url(delivered.order))
    assert (over.status_code, over.json()["reason"]) == (410, "limit")
    assert Delivery.objects.get(pk=delivered.delivery.pk).downloads == 2
    assert DownloadLog.objects.count() == 2


def test_a_package_that_cannot_be_read_costs_no_download(buyer, buyer_client, client, settings):
    """The file is opened before the download is counted."""
    from licensing.storage import _storage

    delivered = order_delivered(buyer)
    link = buyer_client.get(delivery_url(delivered.order)).json()["download_url"]
    _storage().delete(delivered.delivery.storage_name)

    response = client.get(urlsplit(link).path)

    assert response.status_code == 503
    assert response.json()["code"] == "package-unavailable"
    delivered.delivery.refresh_from_db()
    assert delivered.delivery.downloads == 0
    assert not DownloadLog.objects.filter(delivery=delivered.delivery).exists()


def test_head_of_a_package_that_cannot_be_read_is_the_same_503(buyer, buyer_client, client):
    from licensing.storage import _storage

    delivered = order_delivered(buyer)
    link = buyer_client.get(delivery_url(delivered.order)).json()["download_url"]
    _storage().delete(delivered.delivery.storage_name)

    head = client.head(urlsplit(link).path)

    assert head.status_code == client.get(urlsplit(link).path).status_code == 503
    assert head["Content-Type"] == "application/problem+json"
    assert head["Retry-After"]
    delivered.delivery.refresh_from_db()
    assert delivered.delivery.downloads == 0
    assert not DownloadLog.objects.filter(delivery=delivered.delivery).exists()


def test_kms_down_when_the_link_is_asked_for_is_a_503_outage_that_costs_nothing(
    kms_key, buyer, buyer_client, settings
):
    delivered = order_delivered(buyer)
    assert delivered.delivery.key_wrapping.startswith("kms:")
    settings.KMS_ENDPOINT_URL = f"http://127.0.0.1:{free_port()}"

    response = buyer_client.get(delivery_url(delivered.order))

    assert response.status_code == 503, response.content
    assert response["Content-Type"] == "application/problem+json"
    assert response["Retry-After"]
    body = response.json()
    assert body["code"] == "key-service-unavailable"
    assert "127.0.0.1" not in response.content.decode()
    assert kms_key.key_id not in response.content.decode()
    delivered.delivery.refresh_from_db()
    assert delivered.delivery.downloads == 0
    assert not DownloadSession.objects.filter(delivery=delivered.delivery).exists()


def test_a_data_key_that_cannot_be_unwrapped_is_a_500_problem_that_costs_nothing(
    buyer, buyer_client, settings, caplog
):
    """The key-store master key was changed (or KMS refuses the key): no retry cures it."""
    import base64
    import os

    delivered = order_delivered(buyer)
    assert delivered.delivery.key_wrapping == "local"
    settings.KEYSTORE_MASTER_KEY = base64.b64encode(os.urandom(32)).decode()

    with caplog.at_level(logging.ERROR, logger="licensing.services.downloads"):
        response = buyer_client.get(delivery_url(delivered.order))

    assert response.status_code == 500, response.content
    assert response["Content-Type"] == "application/problem+json"
    body = response.json()
    assert (body["status"], body["code"]) == (500, "delivery-key-unusable")
    assert "Retry-After" not in response
    assert "master key" not in response.content.decode()
    assert any(
        str(delivered.delivery.pk) in r.getMessage() and r.levelno == logging.ERROR
        for r in caplog.records
    )
    delivered.delivery.refresh_from_db()
    assert delivered.delivery.downloads == 0
    assert not DownloadSession.objects.filter(delivery=delivered.delivery).exists()
