"""The web server's WSGI application (config/wsgi.py, what gunicorn runs) answers a scrape
holding the metrics token before Django's request cycle, and hands everything else to Django."""

import io
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest
from django.core.signals import request_finished, request_started
from django.db import close_old_connections

from config.wsgi import application

TOKEN = "mt-Hq8Zr2Lx5Vw9Nc3Bk7Pd1Fs4Gj6Ty0Ma"


def call(path: str, *, method: str = "GET", authorization: str | None = None) -> dict[str, Any]:
    environ: dict[str, Any] = {
        "PATH_INFO": path,
        "REQUEST_METHOD": method,
        "REMOTE_ADDR": "10.1.2.3",
        "wsgi.input": io.BytesIO(),
    }
    if authorization is not None:
        environ["HTTP_AUTHORIZATION"] = authorization
    setup_testing_defaults(environ)
    environ["HTTP_HOST"] = "127.0.0.1"
    answer: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], *_: Any) -> None:
        answer["status"] = int(status.split()[0])
        answer["headers"] = dict(headers)

    chunks = application(environ, start_response)
    answer["body"] = b"".join(chunks)
    if hasattr(chunks, "close"):
        chunks.close()
    return answer


@pytest.fixture
def django_requests() -> Any:
    """The requests that reached Django. Django closes its database connections when a request
    starts and finishes; as its test client does, that is held off so the test's transaction
    survives."""
    started: list[Any] = []

    def count(**kwargs: Any) -> None:
        started.append(kwargs)

    request_started.connect(count)
    for signal in (request_started, request_finished):
        signal.disconnect(close_old_connections)
    yield started
    for signal in (request_started, request_finished):
        signal.connect(close_old_connections)
    request_started.disconnect(count)


@pytest.mark.django_db
def test_a_scrape_with_the_token_is_answered_before_django(
    settings: Any, django_requests: list[Any]
) -> None:
    settings.METRICS_TOKEN = TOKEN

    answer = call("/metrics", authorization=f"Bearer {TOKEN}")

    assert answer["status"] == 200
    assert answer["headers"]["Content-Type"].startswith("text/plain; version=")
    assert answer["headers"]["Cache-Control"] == "no-store"
    assert b"marketplace_catalog_cache_requests_total" in answer["body"]
    assert django_requests == []
    head = call("/metrics", method="HEAD", authorization=f"Bearer {TOKEN}")
    assert (head["status"], head["body"]) == (200, b"")


@pytest.mark.django_db
@pytest.mark.parametrize("authorization", [None, "Bearer wrong", f"Basic {TOKEN}"])
def test_a_scrape_without_the_token_goes_to_django_and_is_refused_there(
    settings: Any, django_requests: list[Any], authorization: str | None
) -> None:
    settings.METRICS_TOKEN = TOKEN

    answer = call("/metrics", authorization=authorization)

    assert answer["status"] == 401
    assert answer["headers"]["Content-Type"] == "application/problem+json"
    assert b"marketplace_" not in answer["body"]
    assert len(django_requests) == 1


@pytest.mark.django_db
def test_other_paths_go_to_django(settings: Any, django_requests: list[Any]) -> None:
    settings.METRICS_TOKEN = TOKEN

    answer = call("/api/v1/categories", authorization=f"Bearer {TOKEN}")

    assert answer["status"] == 401  # the metrics token is no API token
    assert len(django_requests) == 1
