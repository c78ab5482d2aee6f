"""Outages answered as outages: with the database, the cache or the broker unreachable (a
closed port, or a terminated backend whose reconnects are refused), a request anywhere is a 503
problem naming the dependency, with Retry-After, and no host, port, folder or bucket in the
answer; the exception is logged as one line. A webhook stored while the broker is down is
acknowledged and processed by the sweep once the broker is back."""

import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
from celery import current_app
from django.db import connection
from django.test import Client
from django.urls import include, path
from django.utils import timezone
from rest_framework.decorators import api_view, permission_classes
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.test import APIClient

from marketplace.models import User
from orders.models import Order, OrderStatus, WebhookEvent, WebhookStatus
from orders.services.webhooks import webhook_secrets
from orders.tasks import webhooks_retry_due
from tests.orders.factories import order_checked_out, sku_for_sale
from tests.orders.stripe_events import session_event, signed
from tests.support.net import free_port
from tests.support.worker import wait_until

PROBLEM = "application/problem+json"
WEBHOOK_URL = "/marketplace/stripe/webhook"


def closed_port() -> int:
    port = free_port()
    with socket.socket() as probe:  # nothing listens there
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    return port


def assert_outage(
    response: Any, code: str, *, port: int, content_type: str = PROBLEM, retry_after: int = 30
) -> None:
    assert response.status_code == 503, response.content
    assert response["Content-Type"].startswith(content_type)
    assert response["Retry-After"] == str(retry_after)
    text = response.content.decode()
    for internal in ("127.0.0.1", "localhost", str(port), "redis://", "postgres", "sqlite"):
        assert internal not in text, internal
    if content_type == PROBLEM:
        body = response.json()
        assert body["code"] == code
        assert body["type"] == f"urn:marketplace:problem:{code}"
        assert body["status"] == 503
        assert body["retry_after"] == retry_after


def outage_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "marketplace.outages"]


def assert_logged_once(caplog: pytest.LogCaptureFixture, dependency: str, needle: str) -> None:
    [line] = outage_lines(caplog)
    assert line.startswith(f"{dependency} unavailable: ")
    assert needle in line
    assert "\n" not in line
    assert "Traceback" not in caplog.text


# --- The database ------------------------------------------------------------------------------


@contextmanager
def database_unreachable() -> Iterator[int]:
    """The test database behind a closed port (PostgreSQL) or in a folder that does not exist
    (SQLite): the next query opens a connection, and that fails."""
    port = closed_port()
    saved = dict(connection.settings_dict)
    connection.close()
    if connection.vendor == "postgresql":
        connection.settings_dict.update(HOST="127.0.0.1", PORT=str(port))
    else:
        connection.settings_dict["NAME"] = f"/nonexistent-{port}/marketplace.sqlite3"
    try:
        yield port
    finally:
        connection.close()
        connection.settings_dict.clear()
        connection.settings_dict.update(saved)


@pytest.fixture
def buyer_api(transactional_db: None) -> APIClient:
    from accounts.services import api_token_issue
    from tests.catalog.factories import TEST_ACTOR

    _, token = api_token_issue(email="buyer@example.com", actor=TEST_ACTOR)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


@pytest.mark.parametrize(
    ("who", "method", "url", "body"),
    [
        ("anyone", "get", "/api/v1/skus", None),
        ("anyone", "get", "/api/v1/categories", None),
        ("anyone", "get", "/.well-known/jwks.json", None),
        ("buyer", "get", "/api/v1/orders", None),
        ("buyer", "post", "/api/v1/checkout", {"sku": "mesh-tools"}),
    ],
)
def test_an_api_call_with_the_database_down_is_a_503_naming_it(
    buyer_api: APIClient, caplog: Any, who: str, method: str, url: str, body: Any
) -> None:
    client = buyer_api if who == "buyer" else APIClient()
    with database_unreachable() as port, caplog.at_level(logging.INFO):
        response = getattr(client, method)(
            url, data=body, format="json", HTTP_IDEMPOTENCY_KEY="key-1"
        )

    assert_outage(response, "database-unavailable", port=port)
    assert response.json()["instance"] == url
    assert_logged_once(caplog, "database", "OperationalError")


@pytest.mark.postgres
def test_a_backend_terminated_mid_flight_whose_reconnects_are_refused_is_a_503(
    buyer_api: APIClient, caplog: Any
) -> None:
    """The connection the process holds is killed (pg_terminate_backend, our own backend
    only) and the server refuses new ones: the query on the dead connection fails, and so
    does every later one on it."""
    from tests.support.pg import pg_connect

    connection.ensure_connection()
    own_pid = connection.connection.info.backend_pid
    with pg_connect() as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (own_pid,))
    port = closed_port()
    saved = dict(connection.settings_dict)
    connection.settings_dict.update(HOST="127.0.0.1", PORT=str(port))
    try:
        with caplog.at_level(logging.INFO):
            first = buyer_api.get("/api/v1/orders")
            second = buyer_api.get("/api/v1/skus")
    finally:
        connection.close()
        connection.settings_dict.clear()
        connection.settings_dict.update(saved)

    assert_outage(first, "database-unavailable", port=port)
    assert_outage(second, "database-unavailable", port=port)
    assert len(outage_lines(caplog)) == 2


def test_a_webhook_with_the_database_down_is_a_503_so_stripe_sends_it_again(
    transactional_db: None, caplog: Any
) -> None:
    body, header = signed(
        {"id": "evt_outage_1", "type": "checkout.session.completed", "data": {}},
        webhook_secrets()[0],
    )
    with database_unreachable() as port, caplog.at_level(logging.INFO):
        response = Client().post(
            WEBHOOK_URL, data=body, content_type="application/json", HTTP_STRIPE_SIGNATURE=header
        )

    assert_outage(response, "database-unavailable", port=port)
    assert_logged_once(caplog, "database", "OperationalError")
    assert not WebhookEvent.objects.exists()


def test_the_admin_with_the_database_down_is_a_plain_503_page(
    transactional_db: None, caplog: Any
) -> None:
    staff = User.objects.create_user(email="ops@example.com", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(staff)

    with database_unreachable() as port, caplog.at_level(logging.INFO):
        response = client.get("/admin/")

    assert_outage(response, "database-unavailable", port=port, content_type="text/html")
    assert b"The database is unavailable" in response.content
    assert_logged_once(caplog, "database", "OperationalError")


def test_a_session_saved_by_the_middleware_with_the_database_down_is_a_503(
    transactional_db: None, settings: Any, caplog: Any
) -> None:
    """The landing page reads no database; the session middleware then saves the session,
    and that fails outside any view."""
    # Sessions in the database, as on the embedded defaults (with Redis they are in Redis).
    settings.SESSION_ENGINE = "django.contrib.sessions.backends.db"
    settings.SESSION_SAVE_EVERY_REQUEST = True
    staff = User.objects.create_user(email="ops@example.com", is_staff=True)
    client = Client(raise_request_exception=False)
    client.force_login(staff)

    with database_unreachable() as port, caplog.at_level(logging.INFO):
        response = client.get("/", HTTP_ACCEPT="application/json")

    assert_outage(response, "database-unavailable", port=port)
    assert_logged_once(caplog, "database", "OperationalError")
    [django_record] = [r for r in caplog.records if r.name == "django.request"]
    assert django_record.getMessage() == "Service Unavailable: /"
    assert django_record.exc_info is None


def test_health_with_the_database_down_names_it_and_only_the_details_say_where_it_is(
    transactional_db: None, settings: Any
) -> None:
    settings.HEALTH_TOKEN = "ht-8Kq2Zr5Xw1Lp7Nv4Bc9Md3Fg6Hj0Sa2T"
    staff = User.objects.create_user(email="ops@example.com", is_staff=True)
    staff_client = Client()
    staff_client.force_login(staff)

    with database_unreachable() as port:
        public = Client().get("/health")
        details = Client().get(
            "/health/details", HTTP_AUTHORIZATION=f"Bearer {settings.HEALTH_TOKEN}"
        )
        # A staff session is read from the database, which is down.
        staff_details = staff_client.get("/health/details")

    assert public.status_code == 503
    assert public.json()["failed"] == ["database"]
    assert public.json()["checks"]["database"] == {"ok": False}
    assert str(port) not in public.content.decode()
    assert details.status_code == 503
    assert details.json()["checks"]["database"]["error"].startswith("OperationalError: ")
    if connection.vendor == "postgresql":
        assert str(port) in details.json()["checks"]["database"]["error"]
    assert_outage(staff_details, "database-unavailable", port=port)


# --- Outside services' words --------------------------------------------------------------------


def test_checkout_with_stripe_unreachable_is_a_503_that_does_not_say_where_stripe_is(
    buyer_client: APIClient, settings: Any, caplog: Any
) -> None:
    sku = sku_for_sale()
    port = closed_port()
    settings.STRIPE_SECRET_KEY = "sk_test_outage"
    settings.STRIPE_API_BASE = f"http://127.0.0.1:{port}"

    with caplog.at_level(logging.INFO):
        response = buyer_client.post(
            "/api/v1/checkout", {"sku": sku.slug}, format="json", HTTP_IDEMPOTENCY_KEY="k-1"
        )

    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert response.json()["code"] == "payment-provider-unavailable"
    text = response.content.decode()
    for internal in ("127.0.0.1", str(port), "Stripe unreachable", "Connection"):
        assert internal not in text, internal
    [logged] = [r.getMessage() for r in caplog.records if r.name == "orders.services.checkout"]
    assert str(port) in logged


def test_checkout_refused_by_stripe_is_a_502_without_stripe_s_message(
    buyer_client: APIClient, settings: Any, stripe_api: Any, caplog: Any
) -> None:
    sku = sku_for_sale()
    settings.STRIPE_SECRET_KEY = "sk_test_revoked_key"

    with caplog.at_level(logging.INFO):
        response = buyer_client.post(
            "/api/v1/checkout", {"sku": sku.slug}, format="json", HTTP_IDEMPOTENCY_KEY="k-1"
        )

    assert response.status_code == 502
    assert response.json()["code"] == "payment-provider-rejected"
    [logged] = [r.getMessage() for r in caplog.records if r.name == "orders.services.checkout"]
    assert "Stripe refused (401)" in logged
    stripes_words = logged.split("Stripe refused (401): ", 1)[1]
    assert stripes_words not in response.content.decode()
    assert "sk_test" not in response.content.decode()


# --- The platform's own 503s -------------------------------------------------------------------


def test_checkout_in_maintenance_says_when_to_come_back(
    buyer_client: APIClient, settings: Any
) -> None:
    settings.MAINTENANCE_MODE = True
    settings.MAINTENANCE_RETRY_AFTER_SECONDS = 600

    response = buyer_client.post(
        "/api/v1/checkout", {"sku": "any"}, format="json", HTTP_IDEMPOTENCY_KEY="k-1"
    )

    assert response.status_code == 503
    assert response.json()["code"] == "maintenance"
    assert response["Retry-After"] == "600"
    assert response.json()["retry_after"] == 600


def test_a_package_storage_cannot_open_says_when_to_come_back_and_not_where_it_is(
    buyer: Any, buyer_client: APIClient
) -> None:
    from licensing.storage import _storage
    from tests.licensing.factories import order_delivered

    delivered = order_delivered(buyer)
    link = buyer_client.get(f"/api/v1/orders/{delivered.order.pk}/delivery").json()
    _storage().delete(delivered.delivery.storage_name)

    response = Client().get(urlsplit(link["download_url"]).path)

    assert response.status_code == 503
    assert response.json()["code"] == "package-unavailable"
    assert response["Retry-After"] == "30"
    assert response.json()["retry_after"] == 30
    assert delivered.delivery.storage_name not in response.content.decode()


# --- The cache ---------------------------------------------------------------------------------


def redis_cache_at(port: int, *, ignore_exceptions: bool) -> dict[str, Any]:
    return {
        "default": {
            "BACKEND": "django_prometheus.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{port}/10",
            "KEY_PREFIX": "outage-test",
            "OPTIONS": {
                "CLIENT_CLASS": "django_redis.client.DefaultClient",
                "SOCKET_CONNECT_TIMEOUT": 1,
                "SOCKET_TIMEOUT": 1,
                "IGNORE_EXCEPTIONS": ignore_exceptions,
            },
        }
    }


def test_catalog_reads_with_the_cache_down_are_served_from_the_database(
    api_client: APIClient, settings: Any, db: None
) -> None:
    """As configured (IGNORE_EXCEPTIONS), the cache's own reads and writes degrade."""
    settings.CACHES = {**settings.CACHES, **redis_cache_at(closed_port(), ignore_exceptions=True)}

    response = api_client.get("/api/v1/skus")

    assert response.status_code == 200
    assert response.json()["results"] == []


def test_a_write_with_the_cache_down_is_a_503_naming_the_cache(
    buyer_client: APIClient, settings: Any
) -> None:
    """As configured: its rate limit cannot be counted, so the write is refused (reads go on,
    above), and the answer does not say where Redis is."""
    port = closed_port()
    sku = sku_for_sale()
    settings.CACHES = {**settings.CACHES, **redis_cache_at(port, ignore_exceptions=True)}

    response = buyer_client.post(
        "/api/v1/checkout", {"sku": sku.slug}, format="json", HTTP_IDEMPOTENCY_KEY="k-1"
    )

    assert_outage(response, "cache-unavailable", port=port, retry_after=5)
    assert not Order.objects.exists()


def test_a_cache_failure_that_reaches_a_request_is_a_503_naming_the_cache(
    api_client: APIClient, settings: Any, db: None, caplog: Any
) -> None:
    """A Redis connection error that is not swallowed (here: a cache that does not ignore
    them) is an outage, not a 500."""
    port = closed_port()
    settings.CACHES = {**settings.CACHES, **redis_cache_at(port, ignore_exceptions=False)}

    with caplog.at_level(logging.INFO):
        response = api_client.get("/api/v1/skus")

    assert_outage(response, "cache-unavailable", port=port)
    assert_logged_once(caplog, "cache", "Connection refused")


# --- The broker --------------------------------------------------------------------------------


def _drop_broker_connections() -> None:
    """The app keeps its connection and producer pools; a new URL needs new ones (kombu keeps
    each URL's pools, so the real broker's are found again when it is back)."""
    current_app._pool = None
    current_app.amqp._producer_pool = None


def broker_at(settings: Any, url: str) -> None:
    """Points this process's Celery app at `url` (its configuration reads the settings)."""
    settings.CELERY_BROKER_URL = url
    _drop_broker_connections()


@pytest.fixture
def broker_down(settings: Any) -> Iterator[int]:
    """This process's broker behind a closed port for the test."""
    port = closed_port()
    real = settings.CELERY_BROKER_URL
    broker_at(settings, f"redis://127.0.0.1:{port}/11")
    yield port
    broker_at(settings, real)


@pytest.mark.worker
def test_a_webhook_stored_while_the_broker_is_down_is_200_and_the_sweep_processes_it(
    transactional_db: None, settings: Any, start_worker: Any, caplog: Any
) -> None:
    settings.WEBHOOK_STRANDED_SECONDS = 1
    real_broker = settings.CELERY_BROKER_URL
    buyer = User.objects.create_user(email="buyer@example.com")
    order = order_checked_out(buyer, sku_for_sale(price=1500))
    event = session_event("checkout.session.completed", order)
    body, header = signed(event, webhook_secrets()[0])

    port = closed_port()
    broker_at(settings, f"redis://127.0.0.1:{port}/11")
    try:
        with caplog.at_level(logging.INFO):
            response = Client().post(
                WEBHOOK_URL,
                data=body,
                content_type="application/json",
                HTTP_STRIPE_SIGNATURE=header,
            )
    finally:
        broker_at(settings, real_broker)

    assert response.status_code == 200, response.content
    assert response.json() == {"received": True, "id": event["id"], "duplicate": False}
    stored = WebhookEvent.objects.get(event_id=event["id"])
    assert stored.status == WebhookStatus.RECEIVED
    assert str(port) not in response.content.decode()
    [warning] = [r for r in caplog.records if r.name == "orders.services.webhooks"]
    assert "the broker is unavailable, the sweep will process it" in warning.getMessage()

    # The broker is back: beat's sweep finds the event stranded and a real worker runs it.
    worker = start_worker()
    stranded_after = timedelta(seconds=settings.WEBHOOK_STRANDED_SECONDS)
    wait_until(lambda: timezone.now() - stored.received_at > stranded_after, timeout=10)
    webhooks_retry_due.delay()
    wait_until(
        lambda: WebhookEvent.objects.get(pk=stored.pk).status == WebhookStatus.PROCESSED,
        worker=worker,
    )
    stored.refresh_from_db()
    order.refresh_from_db()
    assert stored.attempts == 1
    assert order.status == OrderStatus.PAID
    assert Order.objects.count() == 1


@pytest.mark.urls("tests.marketplace.test_outages")
def test_an_api_call_that_enqueues_with_the_broker_down_is_a_503_naming_it(
    api_client: APIClient, broker_down: int, caplog: Any
) -> None:
    with caplog.at_level(logging.INFO):
        response = api_client.post("/sweep-now")

    assert_outage(response, "broker-unavailable", port=broker_down)
    assert_logged_once(caplog, "broker", "OperationalError")


def test_an_admin_action_that_enqueues_with_the_broker_down_is_a_plain_503_page(
    transactional_db: None, request: pytest.FixtureRequest, caplog: Any
) -> None:
    sku = sku_for_sale()  # its activation enqueues too: before the outage
    staff = User.objects.create_user(email="ops@example.com", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(staff)
    broker_down = request.getfixturevalue("broker_down")

    with caplog.at_level(logging.INFO):
        response = client.post(
            "/admin/catalog/artifact/",
            {"action": "check_integrity", "_selected_action": [sku.artifact_id]},
        )

    assert_outage(response, "broker-unavailable", port=broker_down, content_type="text/html")
    assert b"The task broker is unavailable" in response.content
    assert_logged_once(caplog, "broker", "OperationalError")


# A view of the API that enqueues a task, as an API view that hands work to a worker does.
@api_view(["POST"])
@permission_classes([AllowAny])
def sweep_now(request: Any) -> Response:
    webhooks_retry_due.delay()
    return Response({"queued": True})


urlpatterns = [path("sweep-now", sweep_now), path("", include("config.urls"))]
handler500 = "marketplace.views.server_error"
