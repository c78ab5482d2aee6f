"""Rate limits: each caller and each endpoint class has a limit of its own (docs/api.md), over
which the answer is a 429 problem with Retry-After, and nothing is done."""

import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from django.test import Client
from rest_framework.test import APIClient

from audit.models import AuditEvent
from licensing.sealing import public_key_text
from marketplace import ratelimit

SetRates = Callable[..., None]
REPO = Path(__file__).resolve().parents[2]
KEY_URL = "/api/v1/me/delivery-key"


@pytest.fixture(autouse=True)
def _fresh_counters() -> None:
    # The local-memory counters live in this process across tests; the conftest empties the
    # cache (and so the Redis counters) but not these.
    ratelimit.local_counters.clear()


@pytest.fixture
def rates(settings: Any) -> SetRates:
    """Sets the given scopes' rates for one test; the others stay out of reach."""

    def set_rates(**scopes: str) -> None:
        framework = settings.REST_FRAMEWORK
        settings.REST_FRAMEWORK = {
            **framework,
            "DEFAULT_THROTTLE_RATES": {**framework["DEFAULT_THROTTLE_RATES"], **scopes},
        }

    return set_rates


def _public_key() -> str:
    return public_key_text(X25519PrivateKey.generate().public_key())


def assert_rate_limited(response: Any, *, limit: str, retry_after_at_most: int) -> None:
    assert response.status_code == 429
    assert response["Content-Type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == "throttled"
    assert body["status"] == 429
    assert body["limit"] == limit
    assert 1 <= int(response["Retry-After"]) <= retry_after_at_most
    assert body["retry_after"] == int(response["Retry-After"])


# --- Callers -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_anonymous_callers_are_held_to_the_anon_rate(
    api_client: APIClient, rates: SetRates
) -> None:
    rates(anon="3/min")

    responses = [api_client.get("/api/v1/skus") for _ in range(4)]

    assert [r.status_code for r in responses] == [200, 200, 200, 429]
    assert_rate_limited(responses[-1], limit="anon", retry_after_at_most=60)
    assert responses[-1].json()["type"] == "urn:marketplace:problem:throttled"
    assert responses[-1].json()["instance"] == "/api/v1/skus"


def test_signed_in_callers_are_held_to_the_user_rate_only(
    buyer_client: APIClient, rates: SetRates
) -> None:
    rates(anon="1/min", user="2/min")

    statuses = [buyer_client.get("/api/v1/skus").status_code for _ in range(3)]

    assert statuses == [200, 200, 429]


def test_each_buyer_has_a_budget_of_their_own(
    buyer_client: APIClient, other_buyer: Any, rates: SetRates
) -> None:
    from accounts.services import api_token_issue
    from tests.catalog.factories import TEST_ACTOR

    rates(user="1/hour")
    _, token = api_token_issue(email=other_buyer.email, actor=TEST_ACTOR)
    other = APIClient()
    other.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")

    assert buyer_client.get("/api/v1/orders").status_code == 200
    assert buyer_client.get("/api/v1/orders").status_code == 429
    assert other.get("/api/v1/orders").status_code == 200


@pytest.mark.django_db
def test_a_forged_forwarded_for_header_does_not_reset_the_limit(
    api_client: APIClient, rates: SetRates
) -> None:
    rates(anon="3/min")

    statuses = [
        api_client.get("/api/v1/skus", HTTP_X_FORWARDED_FOR=f"10.0.0.{n}").status_code
        for n in range(4)
    ]

    assert statuses == [200, 200, 200, 429]


@pytest.mark.django_db
def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_limit(
    api_client: APIClient, rates: SetRates, settings: Any
) -> None:
    rates(anon="1/min")
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}

    def get(client_address: str) -> int:
        # The client's own claim first, then the address the proxy saw.
        forwarded = f"198.51.100.7, {client_address}"
        return api_client.get("/api/v1/skus", HTTP_X_FORWARDED_FOR=forwarded).status_code

    assert [get("203.0.113.1"), get("203.0.113.1"), get("203.0.113.2")] == [200, 429, 200]


def test_refused_credentials_are_counted_per_address_and_then_refused_unread(
    api_client: APIClient,
    buyer_token: str,
    rates: SetRates,
    django_assert_num_queries: Any,
) -> None:
    # DRF authenticates before it throttles: without this a made-up token is answered 401,
    # after a look-up, however often it is sent.
    rates(auth_failure="3/min")

    guesses = [
        api_client.get("/api/v1/orders", HTTP_AUTHORIZATION=f"Bearer mkp_guess{n}")
        for n in range(3)
    ]
    with django_assert_num_queries(0):
        refused = api_client.get("/api/v1/orders", HTTP_AUTHORIZATION=f"Bearer {buyer_token}")

    assert [r.status_code for r in guesses] == [401, 401, 401]
    assert_rate_limited(refused, limit="auth_failure", retry_after_at_most=60)
    elsewhere = api_client.get(
        "/api/v1/orders", HTTP_AUTHORIZATION=f"Bearer {buyer_token}", REMOTE_ADDR="192.0.2.50"
    )
    assert elsewhere.status_code == 200
    assert api_client.get("/api/v1/skus").status_code == 200


# --- Endpoint classes --------------------------------------------------------------------------


def test_checkout_has_a_limit_of_its_own_that_leaves_reads_alone(
    buyer_client: APIClient, rates: SetRates
) -> None:
    rates(checkout="2/min")

    def checkout() -> Any:
        return buyer_client.post(
            "/api/v1/checkout",
            {"sku": "no-such-sku"},
            format="json",
            HTTP_IDEMPOTENCY_KEY=str(uuid.uuid4()),
        )

    responses = [checkout() for _ in range(3)]

    assert [r.status_code for r in responses] == [404, 404, 429]
    assert_rate_limited(responses[-1], limit="checkout", retry_after_at_most=60)
    assert buyer_client.get("/api/v1/orders").status_code == 200


def test_download_link_minting_has_a_limit_of_its_own(
    buyer_client: APIClient, rates: SetRates
) -> None:
    rates(download_link="2/min")
    url = f"/api/v1/orders/{uuid.uuid4()}/delivery"

    responses = [buyer_client.get(url) for _ in range(3)]

    assert [r.status_code for r in responses] == [404, 404, 429]
    assert_rate_limited(responses[-1], limit="download_link", retry_after_at_most=60)
    assert buyer_client.get(f"/api/v1/orders/{uuid.uuid4()}").status_code == 404


@pytest.mark.django_db
def test_the_license_check_has_a_limit_of_its_own(api_client: APIClient, rates: SetRates) -> None:
    rates(license_verify="2/min")

    responses = [
        api_client.post("/api/v1/licenses/verify", {"token": "not.a.jws"}, format="json")
        for _ in range(3)
    ]

    assert [r.status_code for r in responses] == [200, 200, 429]
    assert_rate_limited(responses[-1], limit="license_verify", retry_after_at_most=60)
    assert api_client.get("/api/v1/skus").status_code == 200


@pytest.mark.django_db
def test_the_jwks_has_a_limit_of_its_own(api_client: APIClient, rates: SetRates) -> None:
    rates(jwks="2/min")

    responses = [api_client.get("/.well-known/jwks.json") for _ in range(3)]

    assert [r.status_code for r in responses] == [200, 200, 429]
    assert_rate_limited(responses[-1], limit="jwks", retry_after_at_most=60)
    assert api_client.get("/api/v1/skus").status_code == 200


def test_audit_writing_actions_share_one_budget_and_a_refused_one_writes_nothing(
    buyer_client: APIClient, buyer: Any, rates: SetRates
) -> None:
    rates(buyer_write="3/hour")
    first_key = _public_key()

    assert buyer_client.put(KEY_URL, {"public_key": first_key}, format="json").status_code == 200
    assert buyer_client.delete(KEY_URL).status_code == 204
    assert buyer_client.put(KEY_URL, {"public_key": first_key}, format="json").status_code == 200
    events = AuditEvent.objects.count()

    refused = [
        buyer_client.put(KEY_URL, {"public_key": _public_key()}, format="json"),
        buyer_client.delete(KEY_URL),
        buyer_client.post(
            "/api/v1/checkout", {"sku": "x"}, format="json", HTTP_IDEMPOTENCY_KEY="k-1"
        ),
    ]

    for response in refused:
        assert_rate_limited(response, limit="buyer_write", retry_after_at_most=3600)
    assert AuditEvent.objects.count() == events
    assert buyer_client.get(KEY_URL).json()["public_key"] == first_key


def test_checkouts_count_against_the_audit_writing_budget(
    buyer_client: APIClient, rates: SetRates
) -> None:
    rates(buyer_write="2/hour")

    for n in range(2):
        buyer_client.post(
            "/api/v1/checkout", {"sku": "x"}, format="json", HTTP_IDEMPOTENCY_KEY=f"k-{n}"
        )
    response = buyer_client.put(KEY_URL, {"public_key": _public_key()}, format="json")

    assert_rate_limited(response, limit="buyer_write", retry_after_at_most=3600)


# --- Paths outside the API ---------------------------------------------------------------------


@pytest.mark.django_db
def test_the_webhook_is_limited_per_address(client: Client, rates: SetRates) -> None:
    rates(webhook="2/min")

    def post(address: str) -> Any:
        return client.post(
            "/marketplace/stripe/webhook",
            b"{}",
            content_type="application/json",
            HTTP_STRIPE_SIGNATURE="t=1,v1=00",
            REMOTE_ADDR=address,
        )

    responses = [post("192.0.2.1") for _ in range(3)]

    assert [r.status_code for r in responses[:2]] == [400, 400]
    assert_rate_limited(responses[2], limit="webhook", retry_after_at_most=60)
    assert post("192.0.2.2").status_code == 400


@pytest.mark.django_db
@pytest.mark.parametrize(("path", "scope"), [("/health", "health"), ("/metrics", "metrics")])
def test_health_and_metrics_are_limited_per_address(
    client: Client, rates: SetRates, path: str, scope: str
) -> None:
    rates(**{scope: "2/min"})

    responses = [client.get(path) for _ in range(3)]

    assert 429 not in [r.status_code for r in responses[:2]]
    assert_rate_limited(responses[2], limit=scope, retry_after_at_most=60)
    assert client.get("/api/v1/skus").status_code == 200


@pytest.mark.django_db
def test_staff_sign_in_attempts_are_limited_per_address_whatever_the_account(
    client: Client, rates: SetRates
) -> None:
    rates(staff_login="3/min")

    responses = [
        client.post("/admin/login/", {"username": f"staff{n}@example.com", "password": "guess"})
        for n in range(4)
    ]

    assert [r.status_code for r in responses] == [200, 200, 200, 429]
    # A page, as the admin's form is, with the wait in Retry-After.
    refused = responses[-1]
    assert refused["Content-Type"].startswith("text/html")
    assert 1 <= int(refused["Retry-After"]) <= 60
    assert "<h1>Too many requests</h1>" in refused.content.decode()
    # The form itself is not counted.
    assert client.get("/admin/login/").status_code == 200


@pytest.mark.django_db
def test_sign_ins_through_the_identity_provider_share_that_limit(
    client: Client, rates: SetRates
) -> None:
    rates(staff_login="3/min")

    responses = [
        client.get("/oidc/authenticate/"),
        client.get("/oidc/callback/", {"code": "made-up", "state": "made-up"}),
        client.post("/admin/login/", {"username": "staff@example.com", "password": "guess"}),
        client.get("/oidc/callback/", {"code": "made-up", "state": "made-up"}),
    ]

    assert 429 not in [r.status_code for r in responses[:3]]
    assert responses[-1].status_code == 429


@pytest.mark.parametrize("value", ["ten/min", "10/fortnight", "0/min", "10"])
def test_a_rate_of_another_form_stops_the_platform_naming_the_variable(value: str) -> None:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "MARKETPLACE_THROTTLE_CHECKOUT": value,
    }
    done = subprocess.run(
        [sys.executable, "manage.py", "check"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode != 0
    assert "ImproperlyConfigured: MARKETPLACE_THROTTLE_CHECKOUT: a rate is N/s, N/min" in (
        done.stderr
    )


# --- A refused request counts against no limit -------------------------------------------------


def test_checkouts_refused_by_their_own_limit_leave_the_write_budget_alone(
    buyer_client: APIClient, rates: SetRates
) -> None:
    rates(checkout="2/min", buyer_write="4/hour")

    checkouts = [
        buyer_client.post(
            "/api/v1/checkout", {"sku": "x"}, format="json", HTTP_IDEMPOTENCY_KEY=f"k-{n}"
        ).status_code
        for n in range(6)
    ]
    # Two writes are spent; the 429s spent nothing.
    keys = [
        buyer_client.put(KEY_URL, {"public_key": _public_key()}, format="json") for _ in range(3)
    ]

    assert checkouts == [404, 404, 429, 429, 429, 429]
    assert [r.status_code for r in keys[:2]] == [200, 200]
    assert_rate_limited(keys[2], limit="buyer_write", retry_after_at_most=3600)


def test_a_request_refused_by_its_endpoint_limit_is_not_counted_as_the_buyers_request(
    buyer_client: APIClient, rates: SetRates
) -> None:
    rates(download_link="1/min", user="4/min")
    url = f"/api/v1/orders/{uuid.uuid4()}/delivery"

    links = [buyer_client.get(url).status_code for _ in range(4)]
    reads = [buyer_client.get("/api/v1/orders").status_code for _ in range(4)]

    assert links == [404, 429, 429, 429]
    assert reads == [200, 200, 200, 429]
