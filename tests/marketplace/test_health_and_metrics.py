import socket

import pytest

from tests.support.net import free_port

pytestmark = pytest.mark.django_db


def test_health_reports_every_check(api_client):
    response = api_client.get("/health")

    assert response.status_code == 200
    body = response.json()
    assert body["ok"] is True
    assert set(body["checks"]) == {"database", "cache", "broker", "storage"}
    assert all(check["ok"] for check in body["checks"].values())
    assert body["failed"] == []
    assert isinstance(body["signingConfigured"], bool)
    assert response["Cache-Control"] == "no-store"


def _closed_port() -> int:
    port = free_port()
    with socket.socket() as probe:  # nothing listens there
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    return port


def test_health_is_503_naming_an_unreachable_cache(api_client, settings):
    settings.CACHES = {
        "default": {
            "BACKEND": "django_prometheus.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{_closed_port()}/0",
            "OPTIONS": {
                "CLIENT_CLASS": "django_redis.client.DefaultClient",
                "SOCKET_CONNECT_TIMEOUT": 1,
                "IGNORE_EXCEPTIONS": True,
            },
        }
    }
    response = api_client.get("/health")

    assert response.status_code == 503
    body = response.json()
    assert body["ok"] is False
    assert body["failed"] == ["cache"]
    assert body["checks"]["cache"]["ok"] is False
    assert body["checks"]["database"]["ok"] is True


def test_health_is_503_naming_an_unreachable_broker(api_client, settings):
    settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{_closed_port()}/0"
    response = api_client.get("/health")

    assert response.status_code == 503
    assert response.json()["failed"] == ["broker"]
    assert "Error" in response.json()["checks"]["broker"]["error"]


def test_health_is_503_naming_missing_storage(api_client, settings, tmp_path):
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


@pytest.mark.s3
def test_health_checks_the_s3_bucket(api_client, settings, s3_storage):
    assert api_client.get("/health").json()["checks"]["storage"]["ok"] is True

    s3_storage.client.delete_bucket(Bucket=s3_storage.name)
    response = api_client.get("/health")
    assert response.status_code == 503
    assert response.json()["failed"] == ["storage"]


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
