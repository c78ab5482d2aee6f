"""Rate limits that hold under concurrency and through a cache outage.

Against a live server (one thread per connection), 32 requests sent at once by one client pass
exactly as many times as the limit says: each is one atomic step on the counters (Redis when
MARKETPLACE_REDIS_URL is set, as in CI; the per-process counters otherwise). With Redis
unreachable, writes are refused with a 503 and reads go on.
"""

import http.client
import json
import os
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.conf import settings as django_settings
from django.test import Client
from rest_framework.test import APIClient

from audit.models import AuditEvent
from marketplace import ratelimit
from orders.models import Order, WebhookEvent
from tests.orders.factories import sku_for_sale
from tests.orders.stripe_events import envelope, signed
from tests.support.net import free_port

REPO = Path(__file__).resolve().parents[2]
CONCURRENT = 32
LIMIT = 10
SetRates = Callable[..., None]


@pytest.fixture(autouse=True)
def _fresh_counters() -> None:
    ratelimit.local_counters.clear()


@pytest.fixture
def rates(settings: Any) -> SetRates:
    def set_rates(**scopes: str) -> None:
        framework = settings.REST_FRAMEWORK
        settings.REST_FRAMEWORK = {
            **framework,
            "DEFAULT_THROTTLE_RATES": {**framework["DEFAULT_THROTTLE_RATES"], **scopes},
        }

    return set_rates


def fire_at_once(
    base_url: str, method: str, path: str, headers: Callable[[int], dict[str, str]], body: bytes
) -> Counter[int]:
    """Sends CONCURRENT requests on as many connections, released together by a barrier once
    every connection is open; returns how many got each status."""
    url = urlsplit(base_url)
    barrier = threading.Barrier(CONCURRENT)

    def one(n: int) -> int:
        connection = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        try:
            connection.connect()
            barrier.wait(timeout=30)
            connection.request(method, path, body=body or None, headers=headers(n))
            response = connection.getresponse()
            response.read()
            return response.status
        finally:
            connection.close()

    with ThreadPoolExecutor(CONCURRENT) as pool:
        return Counter(pool.map(one, range(CONCURRENT)))


@pytest.mark.django_db(transaction=True)
def test_32_concurrent_anonymous_reads_pass_exactly_the_limit(
    live_server: Any, rates: SetRates
) -> None:
    rates(anon=f"{LIMIT}/hour")

    statuses = fire_at_once(live_server.url, "GET", "/api/v1/skus", lambda n: {}, b"")

    assert statuses == Counter({200: LIMIT, 429: CONCURRENT - LIMIT})


@pytest.mark.django_db(transaction=True)
def test_32_concurrent_reads_of_one_buyer_pass_exactly_the_limit(
    live_server: Any, buyer_token: str, rates: SetRates
) -> None:
    rates(user=f"{LIMIT}/hour")
    auth = {"Authorization": f"Bearer {buyer_token}"}

    statuses = fire_at_once(live_server.url, "GET", "/api/v1/orders", lambda n: auth, b"")

    assert statuses == Counter({200: LIMIT, 429: CONCURRENT - LIMIT})


@pytest.mark.django_db(transaction=True)
def test_32_concurrent_checkouts_of_one_buyer_pass_exactly_the_limit(
    live_server: Any, buyer_token: str, rates: SetRates
) -> None:
    rates(checkout=f"{LIMIT}/hour")

    def headers(n: int) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {buyer_token}",
            "Content-Type": "application/json",
            "Idempotency-Key": f"concurrent-{n}",
        }

    body = json.dumps({"sku": "no-such-sku"}).encode()
    statuses = fire_at_once(live_server.url, "POST", "/api/v1/checkout", headers, body)

    # Each one that passes the limit finds no such SKU.
    assert statuses == Counter({404: LIMIT, 429: CONCURRENT - LIMIT})


@pytest.mark.django_db(transaction=True)
def test_32_concurrent_webhook_posts_from_one_address_pass_exactly_the_limit(
    live_server: Any, rates: SetRates
) -> None:
    rates(webhook=f"{LIMIT}/hour")

    def headers(n: int) -> dict[str, str]:
        return {"Content-Type": "application/json", "Stripe-Signature": "t=1,v1=00"}

    statuses = fire_at_once(live_server.url, "POST", "/marketplace/stripe/webhook", headers, b"{}")

    # Each one that passes the limit is refused for its signature.
    assert statuses == Counter({400: LIMIT, 429: CONCURRENT - LIMIT})


@pytest.mark.django_db(transaction=True)
def test_32_concurrent_made_up_tokens_from_one_address_are_refused_past_the_limit(
    live_server: Any, rates: SetRates
) -> None:
    rates(auth_failure=f"{LIMIT}/hour")

    def headers(n: int) -> dict[str, str]:
        return {"Authorization": f"Bearer mkp_guess{n}"}

    statuses = fire_at_once(live_server.url, "GET", "/api/v1/orders", headers, b"")

    # All of them arrive before any failure is counted; the count decides which are answered.
    assert statuses == Counter({401: LIMIT, 429: CONCURRENT - LIMIT})


@pytest.mark.skipif(
    not django_settings.CACHES["default"]["BACKEND"].endswith("RedisCache"),
    reason="needs Redis (set MARKETPLACE_REDIS_URL): the local counters are per process",
)
@pytest.mark.django_db
def test_with_redis_every_process_counts_against_one_limit(
    api_client: APIClient, rates: SetRates
) -> None:
    rates(anon="3/min")
    assert [api_client.get("/api/v1/skus").status_code for _ in range(2)] == [200, 200]

    # Another process (a second web worker, say) spends the last request of the window.
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "MARKETPLACE_TEST_CACHE_PREFIX": django_settings.CACHES["default"]["KEY_PREFIX"],
    }
    code = "import django; django.setup(); from marketplace import ratelimit; "
    code += "ratelimit.hit('anon', '127.0.0.1', write=False)"
    subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, check=True, timeout=120)

    assert api_client.get("/api/v1/skus").status_code == 429


# --- Redis down --------------------------------------------------------------------------------


@pytest.fixture
def redis_down(settings: Any) -> str:
    """The cache is Redis on a port where nothing listens; returns that address."""
    address = f"127.0.0.1:{free_port()}"
    settings.CACHES = {
        **settings.CACHES,
        "default": {
            "BACKEND": "django_prometheus.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://{address}/2",
            "KEY_PREFIX": f"rate-limit-outage-{uuid.uuid4().hex}",
            "OPTIONS": {
                "CLIENT_CLASS": "django_redis.client.DefaultClient",
                "SOCKET_CONNECT_TIMEOUT": 2,
                "SOCKET_TIMEOUT": 2,
                "IGNORE_EXCEPTIONS": True,
            },
        },
    }
    return address


def assert_cache_unavailable(response: Any, address: str) -> None:
    assert response.status_code == 503
    assert response["Content-Type"] == "application/problem+json"
    assert response["Retry-After"] == "5"
    body = response.json()
    assert body["code"] == "cache-unavailable"
    host, port = address.split(":")
    assert host not in response.content.decode()
    assert port not in response.content.decode()


def test_with_redis_down_buyer_writes_are_refused_and_nothing_is_written(
    buyer_client: APIClient, redis_down: str
) -> None:
    sku = sku_for_sale()
    events = AuditEvent.objects.count()

    checkout = buyer_client.post(
        "/api/v1/checkout", {"sku": sku.slug}, format="json", HTTP_IDEMPOTENCY_KEY="down-1"
    )
    key = buyer_client.put("/api/v1/me/delivery-key", {"public_key": "A" * 43}, format="json")

    assert_cache_unavailable(checkout, redis_down)
    assert_cache_unavailable(key, redis_down)
    assert Order.objects.count() == 0
    assert AuditEvent.objects.count() == events


@pytest.mark.django_db
def test_with_redis_down_a_signed_webhook_is_still_stored_and_an_unsigned_one_refused(
    client: Client, redis_down: str, settings: Any
) -> None:
    # The signature, not the rate limit, is what keeps anyone else from writing through it.
    secret = "whsec_test_outage_0123456789abcdef"
    settings.STRIPE_WEBHOOK_SECRETS = [secret]
    body, header = signed(envelope("ping.test", {"object": "ping"}), secret)

    def post(body: bytes, header: str) -> Any:
        return client.post(
            "/marketplace/stripe/webhook",
            body,
            content_type="application/json",
            HTTP_STRIPE_SIGNATURE=header,
        )

    assert post(body, header).status_code == 200
    assert post(b"{}", "t=1,v1=00").status_code == 400
    assert WebhookEvent.objects.count() == 1


def test_with_redis_down_reads_and_the_license_check_go_on(
    buyer_client: APIClient, api_client: APIClient, client: Client, redis_down: str
) -> None:
    sku = sku_for_sale()

    assert api_client.get("/api/v1/skus").json()["results"][0]["slug"] == sku.slug
    assert api_client.get("/.well-known/jwks.json").status_code == 200
    assert buyer_client.get("/api/v1/orders").status_code == 200
    verify = api_client.post("/api/v1/licenses/verify", {"token": "not.a.jws"}, format="json")
    assert verify.status_code == 200
    # Staff can still sign in to handle the outage (django-axes' lockout is in the database).
    assert (
        client.post("/admin/login/", {"username": "a@example.com", "password": "x"}).status_code
        == 200
    )


def test_with_redis_down_a_download_link_is_refused_though_it_is_a_get(
    buyer_client: APIClient, redis_down: str
) -> None:
    # Minting a link writes (a download session; on S3 a counted, logged download): its limit
    # fails closed like a write's.
    response = buyer_client.get(f"/api/v1/orders/{uuid.uuid4()}/delivery")

    assert_cache_unavailable(response, redis_down)
