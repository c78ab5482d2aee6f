"""/health and /metrics. /health's public body names each check and whether it passed, never
an error (they name hosts, ports, folders and buckets); /health/details shows the errors to
staff sessions and to the holder of MARKETPLACE_HEALTH_TOKEN."""

import socket

import pytest
from django.test import Client

from marketplace.models import User
from tests.support.net import free_port

pytestmark = pytest.mark.django_db

HEALTH_TOKEN = "ht-8Kq2Zr5Xw1Lp7Nv4Bc9Md3Fg6Hj0Sa2T"


def test_health_reports_every_check(api_client):
    response = api_client.get("/health")

    assert response.status_code == 200
    body = response.json()
    assert body == {
        "ok": True,
        "checks": {name: {"ok": True} for name in ("database", "cache", "broker", "storage")},
        "failed": [],
        "signingConfigured": body["signingConfigured"],
    }
    assert isinstance(body["signingConfigured"], bool)
    assert response["Cache-Control"] == "no-store"


def _closed_port() -> int:
    port = free_port()
    with socket.socket() as probe:  # nothing listens there
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    return port


def _staff_client() -> Client:
    client = Client()
    client.force_login(User.objects.create_user(email="ops@example.com", is_staff=True))
    return client


def test_health_is_503_naming_an_unreachable_cache(api_client, settings):
    port = _closed_port()
    settings.CACHES = {
        **settings.CACHES,
        "default": {
            "BACKEND": "django_prometheus.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{port}/0",
            "OPTIONS": {
                "CLIENT_CLASS": "django_redis.client.DefaultClient",
                "SOCKET_CONNECT_TIMEOUT": 1,
                "IGNORE_EXCEPTIONS": True,
            },
        },
    }
    response = api_client.get("/health")

    assert response.status_code == 503
    body = response.json()
    assert body["ok"] is False
    assert body["failed"] == ["cache"]
    assert body["checks"]["cache"] == {"ok": False}
    assert body["checks"]["database"] == {"ok": True}
    assert str(port) not in response.content.decode()


def test_health_is_503_naming_an_unreachable_broker_and_not_where_it_is(
    api_client, settings, caplog
):
    port = _closed_port()
    settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{port}/0"

    response = api_client.get("/health")

    assert response.status_code == 503
    assert response.json()["failed"] == ["broker"]
    assert response.json()["checks"]["broker"] == {"ok": False}
    text = response.content.decode()
    assert "127.0.0.1" not in text
    assert str(port) not in text
    assert "Error" not in text
    [logged] = [r.getMessage() for r in caplog.records if r.name == "marketplace.health"]
    assert logged.startswith("health: the broker check failed: ")
    assert str(port) in logged

    details = _staff_client().get("/health/details")

    assert details.status_code == 503
    assert details["Cache-Control"] == "no-store"
    broker = details.json()["checks"]["broker"]
    assert broker["ok"] is False
    assert f"127.0.0.1:{port}" in broker["error"]
    assert isinstance(broker["ms"], float)


def test_health_is_503_naming_missing_storage_and_not_its_folder(api_client, settings, tmp_path):
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path / "gone")},
        },
    }
    response = api_client.get("/health")

    assert response.status_code == 503
    assert response.json()["failed"] == ["storage"]
    assert str(tmp_path) not in response.content.decode()

    details = _staff_client().get("/health/details")
    assert str(tmp_path / "gone") in details.json()["checks"]["storage"]["error"]


@pytest.mark.s3
def test_health_checks_the_s3_bucket(api_client, settings, s3_storage):
    assert api_client.get("/health").json()["checks"]["storage"]["ok"] is True

    s3_storage.client.delete_bucket(Bucket=s3_storage.name)
    response = api_client.get("/health")
    assert response.status_code == 503
    assert response.json()["failed"] == ["storage"]
    assert s3_storage.name not in response.content.decode()
    assert "HeadBucket" not in response.content.decode()

    details = _staff_client().get("/health/details")
    assert "HeadBucket" in details.json()["checks"]["storage"]["error"]


def test_health_details_with_every_check_passing_is_200_with_timings(settings):
    settings.HEALTH_TOKEN = HEALTH_TOKEN

    response = Client().get("/health/details", HTTP_AUTHORIZATION=f"Bearer {HEALTH_TOKEN}")

    assert response.status_code == 200
    body = response.json()
    assert body["ok"] is True
    assert body["failed"] == []
    assert set(body["checks"]) == {"database", "cache", "broker", "storage"}
    assert all(set(check) == {"ok", "ms"} for check in body["checks"].values())


@pytest.mark.parametrize(
    ("who", "status", "code"),
    [
        ("nobody", 401, "not-authenticated"),
        ("a wrong token", 401, "authentication-failed"),
        ("a buyer's API token", 401, "authentication-failed"),
        ("a session without is_staff", 403, "permission-denied"),
    ],
)
def test_health_details_are_refused_to_anyone_but_staff_and_the_token(
    settings, buyer_token, tmp_path, who, status, code
):
    settings.HEALTH_TOKEN = HEALTH_TOKEN
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path / "gone")},
        },
    }
    client = Client()
    headers = {
        "a wrong token": {"HTTP_AUTHORIZATION": f"Bearer {HEALTH_TOKEN}x"},
        "a buyer's API token": {"HTTP_AUTHORIZATION": f"Bearer {buyer_token}"},
    }.get(who, {})
    if who == "a session without is_staff":
        client.force_login(User.objects.create_user(email="someone@example.com"))

    response = client.get("/health/details", **headers)

    assert response.status_code == status
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["code"] == code
    assert str(tmp_path) not in response.content.decode()
    if status == 401:
        assert response["WWW-Authenticate"] == 'Bearer realm="marketplace"'


def test_without_a_health_token_set_no_bearer_token_reads_the_details(settings):
    settings.HEALTH_TOKEN = ""

    response = Client().get("/health/details", HTTP_AUTHORIZATION="Bearer ")

    assert response.status_code == 401


@pytest.mark.parametrize("token", ["health", "changeme-changeme-changeme-changeme", "a" * 40])
def test_production_refuses_a_weak_health_token(token):
    from tests.marketplace.test_settings import PRODUCTION, manage

    result = manage("check", **{**PRODUCTION, "MARKETPLACE_HEALTH_TOKEN": token})

    assert result.returncode != 0
    assert "MARKETPLACE_HEALTH_TOKEN: " in result.stderr
    assert result.stderr.count("\n  - ") == 1


def test_production_takes_a_strong_health_token():
    from tests.marketplace.test_settings import PRODUCTION, manage

    result = manage("check", **{**PRODUCTION, "MARKETPLACE_HEALTH_TOKEN": HEALTH_TOKEN})

    assert result.returncode == 0, result.stderr


def test_metrics_expose_http_database_cache_and_catalog_figures(api_client, settings):
    settings.METRICS_TOKEN = "mt-Qw7eR2tY9uI4oP1aS6dF3gH8jK5lZ0"
    api_client.get("/api/v1/skus")
    api_client.get("/api/v1/skus")

    response = api_client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {settings.METRICS_TOKEN}")

    assert response.status_code == 200
    text = response.content.decode()
    for metric in (
        "django_http_requests_total_by_method_total",
        "django_db_execute_total",
        "django_cache_get_total",
        'marketplace_catalog_cache_requests_total{result="hit"}',
        'marketplace_catalog_cache_requests_total{result="miss"}',
    ):
        assert metric in text, metric


def test_openapi_schema_and_docs(api_client):
    schema = api_client.get("/api/schema/?format=json")
    assert schema.status_code == 200
    document = schema.json()
    assert document["openapi"].startswith("3.")
    for path in ("/api/v1/skus", "/api/v1/skus/{slug}", "/api/v1/categories", "/api/v1/partners"):
        assert path in document["paths"], path
    parameters = {p["name"] for p in document["paths"]["/api/v1/skus"]["get"]["parameters"]}
    assert {"category", "partner", "q", "min_price", "max_price", "currency", "ordering",
            "cursor", "page_size"} <= parameters  # fmt: skip

    docs = api_client.get("/api/docs/")
    assert docs.status_code == 200
    assert b"swagger-ui" in docs.content


def test_openapi_schema_validates_without_warnings():
    from django.core.management import call_command

    call_command("spectacular", "--validate", "--fail-on-warn", "--file", "/dev/null")
