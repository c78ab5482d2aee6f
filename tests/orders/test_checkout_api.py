"""POST /api/v1/checkout through the HTTP API: with the local gateway and with the real Stripe
client against the Stripe stand-in (tests/support/stripe_api.py)."""

import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, connections
from django.utils import timezone
from prometheus_client import REGISTRY
from rest_framework.test import APIClient

from accounts.services import api_token_issue
from audit.models import AuditEvent
from catalog.models import Sku, SkuStatus
from orders.models import IdempotencyKey, Order, OrderStatus
from orders.services.checkout import request_fingerprint
from tests.catalog.factories import TEST_ACTOR
from tests.orders.factories import sku_for_sale
from tests.support.stripe_api import StripeApiServer

URL = "/api/v1/checkout"


def checkout(client: APIClient, body: Any, key: str | None = "key-1") -> Any:
    headers = {} if key is None else {"HTTP_IDEMPOTENCY_KEY": key}
    return client.post(URL, data=body, format="json", **headers)


def client_for(user: Any) -> APIClient:
    _, token = api_token_issue(email=user.email, actor=TEST_ACTOR)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def written() -> tuple[int, int, int]:
    """(orders, idempotency keys, order audit events): what a refused request must not add."""
    return (
        Order.objects.count(),
        IdempotencyKey.objects.count(),
        AuditEvent.objects.filter(action="order.created").count(),
    )


def latency_count(outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "marketplace_checkout_latency_seconds_count", {"outcome": outcome}
    )
    return value or 0.0


@pytest.fixture(params=["local", "stripe"])
def gateway(request: pytest.FixtureRequest) -> StripeApiServer | None:
    """Each test using this runs once with the local gateway and once with Stripe's stand-in."""
    if request.param == "stripe":
        return request.getfixturevalue("stripe_api")
    return None


@pytest.fixture
def sku(db: None) -> Sku:
    return sku_for_sale(price=1999, currency="EUR", title="Mesh Tools", version="2.1.0")


# --- The answer and what it writes ---------------------------------------------------------


def test_checkout_creates_the_order_and_its_payment_page(
    buyer_client: APIClient, buyer: Any, sku: Sku, gateway: StripeApiServer | None, settings: Any
):
    settings.CHECKOUT_SUCCESS_URL = "https://shop.example.com/thanks"
    settings.CHECKOUT_CANCEL_URL = "https://shop.example.com/changed-my-mind"
    created = latency_count("created")

    response = checkout(buyer_client, {"sku": sku.slug})

    assert response.status_code == 201, response.content
    assert "Idempotent-Replayed" not in response.headers
    body = response.json()
    assert set(body) == {"order", "checkout_url"}
    order = Order.objects.get()
    assert body["order"]["id"] == str(order.id)
    assert {k: body["order"][k] for k in ("status", "sku", "amount", "currency")} == {
        "status": "pending",
        "sku": sku.slug,
        "amount": 1999,
        "currency": "EUR",
    }
    assert body["order"]["created_at"] == order.created_at.isoformat().replace("+00:00", "Z")
    assert body["checkout_url"] == order.checkout_url == body["order"]["checkout_url"]
    # The snapshot: the SKU as it was sold.
    splits = [{"partner": s.partner.slug, "basis_points": s.basis_points} for s in sku.splits.all()]
    assert (order.buyer, order.sku, order.status) == (buyer, sku, OrderStatus.PENDING)
    assert (order.sku_slug, order.sku_title, order.sku_version) == (sku.slug, "Mesh Tools", "2.1.0")
    assert (order.seller_slug, order.amount, order.currency) == (sku.partner.slug, 1999, "EUR")
    assert order.splits == splits
    assert sum(split["basis_points"] for split in order.splits) == 10_000
    if gateway is None:
        assert order.gateway == "local"
        assert order.checkout_session_id.startswith("cs_local_")
        assert body["checkout_url"].endswith(
            f"/marketplace/local-checkout/{order.checkout_session_id}"
        )
    else:
        [session] = gateway.sessions.values()
        assert order.gateway == "stripe"
        assert (order.checkout_session_id, body["checkout_url"]) == (session["id"], session["url"])
        assert session["client_reference_id"] == str(order.id)
        assert session["metadata"] == {"order_id": str(order.id), "sku": sku.slug}
        assert (session["amount_total"], session["currency"], session["mode"]) == (
            1999,
            "eur",
            "payment",
        )
        assert session["success_url"] == "https://shop.example.com/thanks"
        assert session["cancel_url"] == "https://shop.example.com/changed-my-mind"
        assert gateway.payment_intents[session["payment_intent"]]["metadata"]["order_id"] == str(
            order.id
        )
        # The order id is Stripe's idempotency key, so a retry cannot make a second session.
        assert gateway.requests[0].idempotency_key == f"checkout-{order.id}"
    event = AuditEvent.objects.get(action="order.created")
    assert (event.subject_type, event.subject_id) == ("order", str(order.id))
    assert (event.actor_type, event.actor_id) == ("buyer", str(buyer.uuid))
    assert event.data["checkout_session"] == order.checkout_session_id
    assert (event.data["amount"], event.data["currency"], event.data["sku"]) == (
        1999,
        "EUR",
        sku.slug,
    )
    assert latency_count("created") == created + 1


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_order_audit_event_and_stored_answer_commit_in_one_transaction(
    buyer_client: APIClient, sku: Sku
):
    response = checkout(buyer_client, {"sku": sku.slug})
    assert response.status_code == 201

    # PostgreSQL stamps each row with the transaction that wrote it (xmin).
    order_id = response.json()["order"]["id"]
    with connection.cursor() as cursor:
        cursor.execute("SELECT xmin::text FROM orders_order WHERE id = %s", [order_id])
        order_tx = cursor.fetchone()[0]
        cursor.execute(
            "SELECT xmin::text FROM audit_event WHERE subject_id = %s AND action = %s",
            [order_id, "order.created"],
        )
        audit_tx = cursor.fetchone()[0]
        cursor.execute("SELECT xmin::text FROM orders_idempotencykey")
        answer_tx = cursor.fetchone()[0]
        cursor.execute("SELECT xmin::text FROM catalog_sku WHERE id = %s", [sku.pk])
        sku_tx = cursor.fetchone()[0]
    assert order_tx == audit_tx == answer_tx
    assert sku_tx != order_tx


# --- Idempotency -----------------------------------------------------------------------------


def test_the_same_key_and_body_answers_the_same_again(
    buyer_client: APIClient, sku: Sku, gateway: StripeApiServer | None
):
    first = checkout(buyer_client, {"sku": sku.slug})
    replayed = latency_count("replayed")

    again = checkout(buyer_client, {"sku": sku.slug})

    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert Order.objects.count() == 1
    assert AuditEvent.objects.filter(action="order.created").count() == 1
    if gateway is not None:
        assert len(gateway.sessions) == 1
        assert len(gateway.requests) == 1
    assert latency_count("replayed") == replayed + 1


def test_the_same_key_with_another_body_is_422(buyer_client: APIClient, sku: Sku):
    other = sku_for_sale(price=500)
    checkout(buyer_client, {"sku": sku.slug})
    before = written()

    response = checkout(buyer_client, {"sku": other.slug})

    assert response.status_code == 422
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.json()["code"] == "idempotency-key-reused"
    assert written() == before


def test_keys_are_per_buyer(
    buyer_client: APIClient, buyer: Any, other_buyer: Any, sku: Sku, stripe_api: StripeApiServer
):
    mine = checkout(buyer_client, {"sku": sku.slug}, key="shared-key")
    theirs = checkout(client_for(other_buyer), {"sku": sku.slug}, key="shared-key")

    assert (mine.status_code, theirs.status_code) == (201, 201)
    assert "Idempotent-Replayed" not in theirs.headers
    assert mine.json()["order"]["id"] != theirs.json()["order"]["id"]
    assert {order.buyer for order in Order.objects.all()} == {buyer, other_buyer}
    assert len(stripe_api.sessions) == 2


def test_a_key_is_answered_again_for_24_hours_then_starts_a_new_purchase(
    buyer_client: APIClient, sku: Sku
):
    first = checkout(buyer_client, {"sku": sku.slug})
    IdempotencyKey.objects.update(created_at=timezone.now() - timedelta(hours=23, minutes=59))
    assert checkout(buyer_client, {"sku": sku.slug}).json() == first.json()

    IdempotencyKey.objects.update(created_at=timezone.now() - timedelta(hours=24, minutes=1))
    later = checkout(buyer_client, {"sku": sku.slug})

    assert later.status_code == 201
    assert "Idempotent-Replayed" not in later.headers
    assert later.json()["order"]["id"] != first.json()["order"]["id"]
    assert Order.objects.count() == 2


def test_a_key_still_in_flight_is_409_with_retry_after(
    buyer_client: APIClient, buyer: Any, sku: Sku
):
    IdempotencyKey.objects.create(
        buyer=buyer,
        key="key-1",
        fingerprint=request_fingerprint({"sku": sku.slug}),
        order_id="00000000-0000-4000-8000-000000000001",
        locked_until=timezone.now() + timedelta(seconds=30),
    )
    in_progress = latency_count("checkout-in-progress")

    response = checkout(buyer_client, {"sku": sku.slug})

    assert response.status_code == 409
    assert response.headers["Retry-After"] == "1"
    assert response.json()["code"] == "checkout-in-progress"
    assert Order.objects.count() == 0
    assert latency_count("checkout-in-progress") == in_progress + 1


def test_a_claim_whose_holder_died_is_taken_over(
    buyer_client: APIClient, buyer: Any, sku: Sku, stripe_api: StripeApiServer
):
    claimed_order_id = "00000000-0000-4000-8000-0000000000aa"
    IdempotencyKey.objects.create(
        buyer=buyer,
        key="key-1",
        fingerprint=request_fingerprint({"sku": sku.slug}),
        order_id=claimed_order_id,
        locked_until=timezone.now() - timedelta(seconds=1),
    )

    response = checkout(buyer_client, {"sku": sku.slug})

    assert response.status_code == 201, response.content
    assert response.json()["order"]["id"] == claimed_order_id
    assert stripe_api.requests[0].idempotency_key == f"checkout-{claimed_order_id}"
    assert IdempotencyKey.objects.get().response_status == 201


@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_with_one_key_make_one_order(
    buyer_token: str, sku: Sku, stripe_api: StripeApiServer
):
    # Stripe answers slowly, so the first request still holds the key when the others arrive.
    stripe_api.delay_seconds = 0.5
    count = 6
    barrier = threading.Barrier(count)
    responses: list[Any] = []
    failures: list[BaseException] = []

    def buy() -> None:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {buyer_token}")
        try:
            barrier.wait(timeout=10)
            responses.append(checkout(client, {"sku": sku.slug}, key="same-key"))
        except BaseException as exc:
            failures.append(exc)
        finally:
            connections.close_all()  # this thread's own connection

    threads = [threading.Thread(target=buy) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert failures == []
    statuses = sorted(response.status_code for response in responses)
    assert len(statuses) == count
    created = [r for r in responses if r.status_code == 201]
    assert [r for r in created if "Idempotent-Replayed" not in r.headers] == created[:1]
    assert len({str(r.json()) for r in created}) == 1
    for refused in (r for r in responses if r.status_code != 201):
        assert refused.status_code == 409
        assert refused.headers["Retry-After"] == "1"
        assert refused.json()["code"] == "checkout-in-progress"
    assert Order.objects.count() == 1
    assert len(stripe_api.sessions) == 1
    assert AuditEvent.objects.filter(action="order.created").count() == 1


# --- SKUs that cannot be bought, maintenance --------------------------------------------------


def test_unknown_sku_is_404_and_writes_nothing(buyer_client: APIClient, db: None):
    response = checkout(buyer_client, {"sku": "no-such-thing"})

    assert response.status_code == 404
    assert "no-such-thing" in response.json()["detail"]
    assert written() == (0, 0, 0)


@pytest.mark.parametrize("status", [SkuStatus.SUSPENDED, SkuStatus.RETIRED])
def test_a_sku_not_for_sale_is_409_naming_its_status(
    buyer_client: APIClient, sku: Sku, status: str, stripe_api: StripeApiServer
):
    Sku.objects.filter(pk=sku.pk).update(status=status)

    response = checkout(buyer_client, {"sku": sku.slug})

    assert response.status_code == 409
    body = response.json()
    assert body["code"] == "sku-not-for-sale"
    assert body["sku_status"] == status
    assert status in body["detail"]
    assert written() == (0, 0, 0)
    assert stripe_api.requests == []


def test_maintenance_mode_is_503_and_writes_nothing(
    buyer_client: APIClient, sku: Sku, settings: Any, stripe_api: StripeApiServer
):
    settings.MAINTENANCE_MODE = True

    response = checkout(buyer_client, {"sku": sku.slug})

    assert response.status_code == 503
    assert response.json()["code"] == "maintenance"
    assert written() == (0, 0, 0)
    assert stripe_api.requests == []


# --- Bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [None, "", "k" * 256, "tab\there", "bell\x07", "del\x7f", "caf\u00e9"],
    ids=["missing", "empty", "256-chars", "tab", "control", "delete", "non-ascii"],
)
def test_a_bad_idempotency_key_is_400_and_writes_nothing(
    buyer_client: APIClient, sku: Sku, key: str | None
):
    response = checkout(buyer_client, {"sku": sku.slug}, key=key)

    assert response.status_code == 400
    assert response.headers["Content-Type"] == "application/problem+json"
    assert list(response.json()["errors"]) == ["Idempotency-Key"]
    assert written() == (0, 0, 0)


def test_a_255_character_key_is_accepted(buyer_client: APIClient, sku: Sku):
    key = "~ !" + "k" * 252

    response = checkout(buyer_client, {"sku": sku.slug}, key=key)

    assert response.status_code == 201
    assert IdempotencyKey.objects.get().key == key


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"sku": "x", "coupon": "FREE"}, "coupon"),
        ({"sku": 5}, "sku"),
        ({"sku": None}, "sku"),
        ({"sku": ["a"]}, "sku"),
        ({"sku": "not a slug!"}, "sku"),
        ({}, "sku"),
        ([{"sku": "x"}], "non_field_errors"),
        ("x", "non_field_errors"),
    ],
    ids=["unknown-field", "number", "null", "list", "not-a-slug", "missing", "list-body", "string"],
)
def test_a_bad_body_is_400_naming_the_field(
    buyer_client: APIClient, db: None, body: Any, field: str
):
    response = checkout(buyer_client, body)

    assert response.status_code == 400
    problem = response.json()
    assert field in problem["errors"]
    assert field in problem["detail"]
    assert written() == (0, 0, 0)


def test_a_body_that_is_not_json_is_400(buyer_client: APIClient, db: None):
    response = buyer_client.post(
        URL, data=b"{sku:", content_type="application/json", HTTP_IDEMPOTENCY_KEY="k"
    )

    assert response.status_code == 400
    assert written() == (0, 0, 0)


def test_unauthenticated_is_401_and_writes_nothing(api_client: APIClient, sku: Sku):
    response = checkout(api_client, {"sku": sku.slug})

    assert response.status_code == 401
    assert response.headers["Content-Type"] == "application/problem+json"
    assert "Bearer" in response.headers["WWW-Authenticate"]
    assert written() == (0, 0, 0)


# --- The payment provider failing --------------------------------------------------------------


def test_stripe_down_is_503_then_a_retry_with_the_key_succeeds(
    buyer_client: APIClient, sku: Sku, stripe_api: StripeApiServer
):
    stripe_api.down = True

    refused = checkout(buyer_client, {"sku": sku.slug})

    assert refused.status_code == 503
    assert refused.json()["code"] == "payment-provider-unavailable"
    assert refused.headers["Retry-After"] == "5"
    assert Order.objects.count() == 0
    assert stripe_api.sessions == {}

    stripe_api.down = False
    retried = checkout(buyer_client, {"sku": sku.slug})

    assert retried.status_code == 201, retried.content
    assert "Idempotent-Replayed" not in retried.headers
    order = Order.objects.get()
    assert list(stripe_api.sessions) == [order.checkout_session_id]
    keys = [request.idempotency_key for request in stripe_api.requests]
    assert keys == [f"checkout-{order.id}"] * 2


def test_a_session_whose_answer_was_lost_is_not_created_twice(
    buyer_client: APIClient, sku: Sku, stripe_api: StripeApiServer, settings: Any
):
    # Stripe makes the session but answers after the client gave up waiting.
    settings.STRIPE_TIMEOUT_SECONDS = 0.3
    stripe_api.delay_seconds = 0.8

    refused = checkout(buyer_client, {"sku": sku.slug})

    assert refused.status_code == 503
    deadline = time.monotonic() + 5
    while not stripe_api.sessions and time.monotonic() < deadline:
        time.sleep(0.05)
    [lost] = stripe_api.sessions
    stripe_api.delay_seconds = 0

    retried = checkout(buyer_client, {"sku": sku.slug})

    assert retried.status_code == 201, retried.content
    assert Order.objects.get().checkout_session_id == lost
    assert len(stripe_api.sessions) == 1
    assert stripe_api.requests[-1].replayed is True


def test_stripe_refusing_the_session_is_502_and_makes_no_order(
    buyer_client: APIClient, sku: Sku, stripe_api: StripeApiServer, settings: Any
):
    settings.STRIPE_SECRET_KEY = "sk_test_revoked"

    response = checkout(buyer_client, {"sku": sku.slug})

    assert response.status_code == 502
    assert response.json()["code"] == "payment-provider-rejected"
    assert Order.objects.count() == 0
    assert stripe_api.sessions == {}
    # The OpenAPI document says so too.
    document = buyer_client.get("/api/schema/?format=json").json()
    documented = document["paths"]["/api/v1/checkout"]["post"]["responses"]["502"]
    assert "application/problem+json" in documented["content"]
