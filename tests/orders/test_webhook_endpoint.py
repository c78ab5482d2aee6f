"""POST /marketplace/stripe/webhook: Stripe's signature scheme (made here with the `stripe`
library), storing each event once by its id, and refusing what is not a signed event."""

import hashlib
import hmac
import json
import time
from typing import Any

import pytest
from django.test import Client
from prometheus_client import REGISTRY

from orders.models import Order, OrderStatus, WebhookAttempt, WebhookEvent, WebhookStatus
from orders.services import webhook_event_process
from orders.services.webhooks import RAW_BODY_KEPT
from tests.orders.factories import order_checked_out, sku_for_sale
from tests.orders.stripe_events import envelope, session_event, signed, stripe_object

pytestmark = pytest.mark.django_db

URL = "/marketplace/stripe/webhook"
NEW_SECRET = "whsec_test_new_0123456789abcdef"
OLD_SECRET = "whsec_test_old_fedcba9876543210"


@pytest.fixture(autouse=True)
def _webhook_secret(settings: Any) -> None:
    settings.STRIPE_WEBHOOK_SECRETS = [NEW_SECRET]
    settings.STRIPE_WEBHOOK_TOLERANCE_SECONDS = 300


@pytest.fixture
def stripe_client() -> Client:
    # CSRF checks on, as for any browser-less POST from outside: the endpoint must not need them.
    return Client(enforce_csrf_checks=True)


@pytest.fixture
def order(buyer: Any) -> Order:
    return order_checked_out(buyer, sku_for_sale(price=1500))


def post(client: Client, body: bytes, header: str | None) -> Any:
    extra = {} if header is None else {"HTTP_STRIPE_SIGNATURE": header}
    return client.post(URL, data=body, content_type="application/json", **extra)


def failures(reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "marketplace_stripe_webhook_failures_total", {"reason": reason}
    )
    return value or 0.0


def process_received() -> list[str]:
    return [
        webhook_event_process(event_pk=pk)
        for pk in WebhookEvent.objects.filter(status=WebhookStatus.RECEIVED).values_list(
            "pk", flat=True
        )
    ]


# --- Valid deliveries --------------------------------------------------------------------------


def test_a_signed_event_is_stored_once_and_handed_to_a_worker(
    stripe_client: Client, order: Order, django_capture_on_commit_callbacks: Any
):
    event = session_event("checkout.session.completed", order)
    body, header = signed(event, NEW_SECRET)

    with django_capture_on_commit_callbacks() as enqueued:
        response = post(stripe_client, body, header)

    assert response.status_code == 200, response.content
    assert response.json() == {"received": True, "id": event["id"], "duplicate": False}
    stored = WebhookEvent.objects.get()
    assert (stored.event_id, stored.type, stored.status) == (
        event["id"],
        "checkout.session.completed",
        WebhookStatus.RECEIVED,
    )
    assert stored.payload == event
    assert stored.livemode is False
    assert len(enqueued) == 1
    # Answered before processing: the order is still as it was.
    order.refresh_from_db()
    assert order.status == OrderStatus.PENDING

    assert process_received() == [WebhookStatus.PROCESSED]
    order.refresh_from_db()
    assert order.status == OrderStatus.PAID


def test_the_same_event_again_is_a_duplicate_and_a_no_op(
    stripe_client: Client, order: Order, django_capture_on_commit_callbacks: Any
):
    event = session_event("checkout.session.completed", order)
    with django_capture_on_commit_callbacks() as enqueued_first:
        first = post(stripe_client, *signed(event, NEW_SECRET))
    process_received()
    with django_capture_on_commit_callbacks() as enqueued_again:
        # Stripe signs a redelivery anew, with a later timestamp.
        again = post(stripe_client, *signed(event, NEW_SECRET, timestamp=int(time.time()) + 1))
    process_received()

    assert (first.status_code, again.status_code) == (200, 200)
    assert again.json() == {"received": True, "id": event["id"], "duplicate": True}
    assert WebhookEvent.objects.count() == 1
    assert (len(enqueued_first), len(enqueued_again)) == (1, 0)
    assert WebhookAttempt.objects.count() == 1
    assert WebhookEvent.objects.get().status == WebhookStatus.PROCESSED


@pytest.mark.parametrize("age", [-299, 299])
def test_timestamps_within_the_tolerance_either_way_are_accepted(
    stripe_client: Client, order: Order, age: int
):
    event = session_event("checkout.session.expired", order)
    body, header = signed(event, NEW_SECRET, timestamp=int(time.time()) - age)

    assert post(stripe_client, body, header).status_code == 200
    assert WebhookEvent.objects.count() == 1


def test_several_v1_signatures_during_a_rotation_are_accepted(
    stripe_client: Client, order: Order, settings: Any
):
    # While a secret is rolled, Stripe signs each delivery with the old and the new secret.
    event = session_event("checkout.session.completed", order)
    timestamp = int(time.time())
    body, old = signed(event, OLD_SECRET, timestamp=timestamp)
    _, new = signed(event, NEW_SECRET, timestamp=timestamp)
    header = f"{old},{new.split(',')[1]}"
    assert header.count("v1=") == 2

    settings.STRIPE_WEBHOOK_SECRETS = [NEW_SECRET]
    assert post(stripe_client, body, header).status_code == 200
    settings.STRIPE_WEBHOOK_SECRETS = [OLD_SECRET]
    assert post(stripe_client, body, header).json()["duplicate"] is True


@pytest.mark.parametrize("secret", [NEW_SECRET, OLD_SECRET])
def test_two_configured_secrets_accept_either(
    stripe_client: Client, order: Order, settings: Any, secret: str
):
    settings.STRIPE_WEBHOOK_SECRETS = [NEW_SECRET, OLD_SECRET]
    event = session_event("checkout.session.completed", order)

    response = post(stripe_client, *signed(event, secret))

    assert response.status_code == 200
    assert WebhookEvent.objects.get().event_id == event["id"]


# --- Refused deliveries ------------------------------------------------------------------------


def _header(case: str, body: bytes) -> str | None:
    now = int(time.time())
    if case == "missing":
        return None
    if case == "empty":
        return ""
    if case == "wrong-secret":
        return signed(body, "whsec_someone_else")[1]
    if case == "tampered-body":
        return signed(body.replace(b"1500", b"1"), NEW_SECRET)[1]
    if case == "no-v1":
        return f"t={now},v0=abc"
    if case == "no-timestamp":
        return signed(body, NEW_SECRET)[1].split(",", 1)[1]
    if case == "garbage":
        return "this is not a signature"
    if case == "timestamp-not-a-number":
        return "t=yesterday," + signed(body, NEW_SECRET)[1].split(",", 1)[1]
    if case == "timestamp-superscript":
        return "t=\u00b2," + signed(body, NEW_SECRET)[1].split(",", 1)[1]
    if case == "two-timestamps":
        return f"t={now}," + signed(body, NEW_SECRET, timestamp=now)[1]
    if case == "stale":
        return signed(body, NEW_SECRET, timestamp=now - 301)[1]
    if case == "future":
        # Past the 300 s tolerance by more than a slow run could take to check it.
        return signed(body, NEW_SECRET, timestamp=now + 330)[1]
    raise AssertionError(case)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("missing", "signature_missing"),
        ("empty", "signature_missing"),
        ("wrong-secret", "signature_invalid"),
        ("tampered-body", "signature_invalid"),
        ("no-v1", "signature_invalid"),
        ("no-timestamp", "signature_malformed"),
        ("garbage", "signature_malformed"),
        ("timestamp-not-a-number", "signature_malformed"),
        ("timestamp-superscript", "signature_malformed"),
        ("two-timestamps", "signature_malformed"),
        ("stale", "timestamp_stale"),
        ("future", "timestamp_future"),
    ],
)
def test_a_bad_signature_is_400_stores_nothing_and_is_counted(
    stripe_client: Client, order: Order, case: str, reason: str
):
    body = json.dumps(session_event("checkout.session.completed", order)).encode()
    before = failures(reason)

    response = post(stripe_client, body, _header(case, body))

    assert response.status_code == 400, response.content
    assert response.headers["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert (problem["status"], problem["code"]) == (400, "webhook-signature-invalid")
    assert problem["detail"]
    assert WebhookEvent.objects.count() == 0
    assert failures(reason) == before + 1


@pytest.mark.parametrize(
    "body",
    [
        b"this is not json",
        b"\xff\xfe not utf-8",
        b"nul \x00 byte",
        b"[1, 2, 3]",
        b'{"id": "evt_1"}',
        b"{}",
        b'{"id": "evt_\\u0000", "type": "charge.refunded"}',
        b'{"id": "evt_1", "type": "charge.refunded", "data": {"object": {"x": "\\u0000"}}}',
        b'{"id": "evt_' + b"1" * 252 + b'", "type": "charge.refunded"}',
        b'{"id": "evt_1", "type": ""}',
        b'{"id": "evt_1", "type": "' + b"t" * 101 + b'"}',
        b'{"id": 42, "type": "charge.refunded"}',
        b'{"id": "evt_1", "type": ["charge.refunded"]}',
        b'{"id": "evt_1", "type": "charge.refunded", "data": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"id": "evt_1", "type": "charge.refunded", "data": ' + b'{"a": ' * 100_000,
        b'{"id": "evt_\\ud800", "type": "charge.refunded"}',
        b'{"id": "evt_1", "type": "charge.\\udfff"}',
        b'{"id": "evt_1", "type": "charge.refunded", "data": {"object": {"\\ude00": 1}}}',
        b'{"id": "evt_\xed\xa0\x80", "type": "charge.refunded"}',
        b'{"id": "evt_1", "id": "evt_2", "type": "charge.refunded"}',
        b'{"id": "evt_1", "type": "charge.refunded", "amount": NaN}',
        b'{"id": "evt_1", "type": "charge.refunded", "amount": 1e400}',
    ],
    ids=[
        "text",
        "not-utf8",
        "nul-byte",
        "list",
        "no-type",
        "empty-object",
        "nul-in-id",
        "nul-in-data",
        "id-too-long",
        "empty-type",
        "type-too-long",
        "id-not-a-string",
        "type-not-a-string",
        "deep-data",
        "deep-unclosed",
        "lone-surrogate-in-id",
        "lone-surrogate-in-type",
        "lone-surrogate-in-data",
        "encoded-surrogate-in-id",
        "duplicate-id",
        "nan",
        "huge-number",
    ],
)
def test_a_signed_body_that_is_not_an_event_is_recorded_and_refused(
    stripe_client: Client, body: bytes
):
    timestamp = int(time.time())
    # stripe_events.signed() takes text; bytes that are not UTF-8 are signed the same way here.
    mac = hmac.new(NEW_SECRET.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    before = failures("body_invalid")

    response = post(stripe_client, body, f"t={timestamp},v1={mac.hexdigest()}")

    assert response.status_code == 400
    assert response.json()["code"] == "webhook-body-invalid"
    stored = WebhookEvent.objects.get()
    assert (stored.status, stored.event_id, stored.payload) == (WebhookStatus.REJECTED, None, None)
    kept = body[:RAW_BODY_KEPT]
    assert stored.raw_body == kept.decode("utf-8", "replace").replace("\x00", "\ufffd")
    assert stored.outcome.startswith("unreadable body")
    assert failures("body_invalid") == before + 1


def test_an_event_for_an_order_that_does_not_exist_is_stored_and_ignored(
    stripe_client: Client, db: None
):
    session = stripe_object("checkout.session")
    session.update(
        client_reference_id="00000000-0000-4000-8000-00000000dead",
        metadata={"order_id": "00000000-0000-4000-8000-00000000dead"},
        payment_status="paid",
        status="complete",
    )
    event = envelope("checkout.session.completed", session)

    response = post(stripe_client, *signed(event, NEW_SECRET))

    assert response.status_code == 200
    assert response.json()["duplicate"] is False
    assert process_received() == [WebhookStatus.IGNORED]
    stored = WebhookEvent.objects.get()
    assert (stored.status, stored.order) == (WebhookStatus.IGNORED, None)
    assert "no such order" in stored.outcome


def test_an_event_type_the_platform_does_not_handle_is_stored_and_ignored(
    stripe_client: Client, order: Order
):
    event = envelope("customer.created", {"id": "cus_123", "object": "customer"})

    response = post(stripe_client, *signed(event, NEW_SECRET))

    assert response.status_code == 200
    assert process_received() == [WebhookStatus.IGNORED]
    stored = WebhookEvent.objects.get()
    assert stored.type == "customer.created"
    assert "does not act on it" in stored.outcome
    order.refresh_from_db()
    assert order.status == OrderStatus.PENDING


def signed_bytes(body: bytes, secret: str = NEW_SECRET) -> tuple[bytes, str]:
    """`body` with a valid Stripe-Signature, whatever its bytes (signed() takes text)."""
    timestamp = int(time.time())
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return body, f"t={timestamp},v1={mac.hexdigest()}"


def test_a_signed_event_nested_too_deeply_is_recorded_and_refused_naming_the_limit(
    stripe_client: Client, db: None
):
    deep = b"[" * 2000 + b"]" * 2000
    body = b'{"id": "evt_deep", "type": "charge.refunded", "data": ' + deep + b"}"

    response = post(stripe_client, *signed_bytes(body))

    assert response.status_code == 400
    assert response.headers["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert problem["code"] == "webhook-body-invalid"
    assert "deeper than 32 levels" in problem["detail"]
    stored = WebhookEvent.objects.get()
    assert (stored.status, stored.event_id) == (WebhookStatus.REJECTED, None)
    assert "deeper than 32 levels" in stored.outcome


def test_a_signed_event_with_a_lone_surrogate_in_its_id_is_recorded_and_refused(
    stripe_client: Client, db: None
):
    body = b'{"id": "evt_\\ud83d", "type": "charge.refunded", "livemode": false}'

    response = post(stripe_client, *signed_bytes(body))

    assert response.status_code == 400
    problem = response.json()
    assert problem["code"] == "webhook-body-invalid"
    assert "lone surrogate" in problem["detail"]
    assert "/id" in problem["detail"]
    stored = WebhookEvent.objects.get()
    assert (stored.status, stored.event_id, stored.raw_body) == (
        WebhookStatus.REJECTED,
        None,
        body.decode(),
    )


def test_text_that_only_looks_like_an_escaped_nul_is_stored(stripe_client: Client, db: None):
    # "C:\\u0000" in JSON is a backslash followed by "u0000": no NUL, nothing PostgreSQL refuses.
    event = envelope("customer.created", {"id": "cus_1", "object": "customer"})
    event["data"]["object"]["description"] = "C:\\u0000 and [[[{{{"

    response = post(stripe_client, *signed(event, NEW_SECRET))

    assert response.status_code == 200, response.content
    assert WebhookEvent.objects.get().payload == event


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000,
        b'{"id": "evt_\\ud800", "type": "charge.refunded"}',
        b'{"id": "evt_\\u0000", "type": "charge.refunded"}',
        b"\xff\xfe",
    ],
    ids=["deep", "lone-surrogate", "nul", "not-utf8"],
)
def test_unsigned_junk_is_refused_for_its_signature_and_never_stored(
    stripe_client: Client, db: None, body: bytes
):
    before = failures("signature_invalid")

    response = post(stripe_client, body, signed_bytes(body, "whsec_someone_else")[1])

    assert response.status_code == 400
    assert response.json()["code"] == "webhook-signature-invalid"
    assert WebhookEvent.objects.count() == 0
    assert failures("signature_invalid") == before + 1


@pytest.mark.parametrize("size", [1024 * 1024 + 1, 3 * 1024 * 1024])
def test_a_body_over_one_mebibyte_is_413(stripe_client: Client, db: None, size: int):
    # 3 MiB is past Django's DATA_UPLOAD_MAX_MEMORY_SIZE too: still a 413, not a 400.
    body = b'{"pad": "' + b"x" * (size - 11) + b'"}'
    assert len(body) == size

    response = post(stripe_client, *signed_bytes(body))

    assert response.status_code == 413
    assert response.headers["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert (problem["code"], problem["max_bytes"]) == ("payload-too-large", 1024 * 1024)
    assert WebhookEvent.objects.count() == 0


def test_the_size_limit_is_the_json_body_setting(stripe_client: Client, order: Order, settings):
    settings.JSON_MAX_BYTES = 2048
    event = session_event("checkout.session.completed", order)
    body = json.dumps(event).encode()
    assert len(body) > 2048

    response = post(stripe_client, *signed(event, NEW_SECRET))

    assert response.status_code == 413
    assert WebhookEvent.objects.count() == 0


@pytest.mark.parametrize("method", ["get", "put", "patch", "delete"])
def test_only_post_is_allowed(stripe_client: Client, db: None, method: str):
    response = getattr(stripe_client, method)(URL)

    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.json()["code"] == "method-not-allowed"
