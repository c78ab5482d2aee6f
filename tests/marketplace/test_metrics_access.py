"""Who may read /metrics, and what a scrape costs: no SQL, one rendering per cache window.

On the web server (marketplace.metrics) and on the listener of its own (`metrics_serve`,
started here as the real process, reading the metrics other processes wrote).
"""

import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from prometheus_client.parser import text_string_to_metric_families

from catalog.cache import catalog_cache_requests
from marketplace.metrics import scrape_refusal
from tests.support.net import free_port, wait_for_http

pytestmark = pytest.mark.django_db

TOKEN = "mt-4kQ9vX2pL7sR1wZ8nB5cH3jF6gT0yD"
BASE_DIR = Path(__file__).resolve().parent.parent.parent
# Families the platform defines, any of which would tell an outsider what the platform does.
PLATFORM_FAMILIES = ("marketplace_orders", "marketplace_catalog_cache_requests")


@pytest.fixture
def metrics_token(settings: Any) -> str:
    settings.METRICS_TOKEN = TOKEN
    return TOKEN


def scrape(authorization: str | None = None, remote_addr: str = "127.0.0.1") -> Any:
    headers = {"HTTP_AUTHORIZATION": authorization} if authorization is not None else {}
    return Client(REMOTE_ADDR=remote_addr).get("/metrics", **headers)


def families(text: str) -> set[str]:
    return {family.name for family in text_string_to_metric_families(text)}


def assert_refused_without_leaking(response: Any, status: int) -> None:
    assert response.status_code == status
    assert response["Content-Type"] == "application/problem+json"
    body = response.content.decode()
    assert response.json()["status"] == status
    assert "marketplace_" not in body
    assert "django_" not in body


# --- With a token ------------------------------------------------------------------------------


def test_without_the_token_a_scrape_is_a_401_problem_that_names_no_metric(
    metrics_token: str,
) -> None:
    response = scrape()

    assert_refused_without_leaking(response, 401)
    assert response["WWW-Authenticate"] == 'Bearer realm="metrics"'


@pytest.mark.parametrize(
    "authorization",
    [
        f"Bearer {TOKEN[:-1]}x",
        f"Bearer {TOKEN}x",
        "Bearer ",
        f"Basic {TOKEN}",
        TOKEN,
    ],
)
def test_a_wrong_token_is_a_401(metrics_token: str, authorization: str) -> None:
    response = scrape(authorization)

    assert_refused_without_leaking(response, 401)
    assert response["WWW-Authenticate"].startswith('Bearer realm="metrics"')


def test_the_token_holder_reads_the_platform_metrics(metrics_token: str) -> None:
    response = scrape(f"Bearer {TOKEN}")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    assert response["Cache-Control"] == "no-store"
    found = families(response.content.decode())
    assert set(PLATFORM_FAMILIES) <= found
    assert "django_http_requests_total_by_method" in found


def test_the_token_is_required_from_this_machine_too_once_it_is_set(metrics_token: str) -> None:
    assert scrape(remote_addr="127.0.0.1").status_code == 401
    assert scrape(remote_addr="::1").status_code == 401


# --- Without a token ---------------------------------------------------------------------------


def test_in_dev_without_a_token_only_this_machine_reads_the_metrics(settings: Any) -> None:
    settings.METRICS_TOKEN = ""

    assert scrape(remote_addr="127.0.0.1").status_code == 200
    assert scrape(remote_addr="::1").status_code == 200
    assert_refused_without_leaking(scrape(remote_addr="10.1.2.3"), 403)
    assert_refused_without_leaking(scrape(f"Bearer {TOKEN}", remote_addr="203.0.113.9"), 403)


@pytest.mark.parametrize("service_env", ["staging", "prod"])
def test_outside_dev_without_a_token_nobody_reads_the_metrics(
    settings: Any, service_env: str
) -> None:
    # Production refuses to start so (tests/marketplace/test_settings.py); should it run
    # anyway, the endpoint stays closed.
    settings.METRICS_TOKEN = ""
    settings.SERVICE_ENV = service_env

    assert_refused_without_leaking(scrape(remote_addr="127.0.0.1"), 403)


def test_with_a_port_of_their_own_the_web_servers_metrics_are_404(
    settings: Any, metrics_token: str
) -> None:
    settings.METRICS_PORT = free_port()

    assert_refused_without_leaking(scrape(f"Bearer {TOKEN}"), 404)


def test_only_get_and_head_read_the_metrics(metrics_token: str) -> None:
    client = Client(enforce_csrf_checks=False)
    auth = {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}"}

    assert client.head("/metrics", **auth).status_code == 200
    response = client.put("/metrics", **auth)
    assert response.status_code == 405
    assert response["Allow"] == "GET, HEAD"


# --- What a scrape costs -----------------------------------------------------------------------


def test_a_scrape_runs_no_sql(metrics_token: str) -> None:
    scrape(f"Bearer {TOKEN}")  # the first request of a process may set up its connection

    with CaptureQueriesContext(connection) as queries:
        response = scrape(f"Bearer {TOKEN}")

    assert response.status_code == 200
    assert [query["sql"] for query in queries.captured_queries] == []


def catalog_misses(text: str) -> float:
    [family] = [
        f for f in text_string_to_metric_families(text) if f.name == catalog_cache_requests._name
    ]
    return sum(s.value for s in family.samples if s.labels.get("result") == "miss")


def test_scrapes_within_the_cache_window_share_one_rendering(
    settings: Any, metrics_token: str
) -> None:
    settings.METRICS_CACHE_SECONDS = 0
    fresh = scrape(f"Bearer {TOKEN}").content.decode()
    settings.METRICS_CACHE_SECONDS = 300

    first = scrape(f"Bearer {TOKEN}").content
    catalog_cache_requests.labels(result="miss").inc()
    second = scrape(f"Bearer {TOKEN}").content

    assert second == first  # the same rendering, not a new one
    settings.METRICS_CACHE_SECONDS = 0
    assert catalog_misses(scrape(f"Bearer {TOKEN}").content.decode()) == (catalog_misses(fresh) + 1)


# --- The listener of their own -----------------------------------------------------------------


def metrics_serve(tmp_path: Path, **env: str) -> subprocess.Popen[bytes]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MARKETPLACE_")
        and k not in ("DJANGO_SETTINGS_MODULE", "PROMETHEUS_MULTIPROC_DIR")
    }
    return subprocess.Popen(
        [sys.executable, "manage.py", "metrics_serve"],
        cwd=BASE_DIR,
        env={**clean, "MARKETPLACE_DATA_DIR": str(tmp_path / "data"), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def get(url: str, authorization: str | None = None) -> tuple[int, dict[str, str], str]:
    request = urllib.request.Request(url)  # noqa: S310 - a loopback test server
    if authorization:
        request.add_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read().decode()


@pytest.fixture
def listener(tmp_path: Path) -> Any:
    """metrics_serve on a free port, and a metric another process wrote to the shared folder."""
    shared = tmp_path / "multiproc"
    shared.mkdir()
    writer = (
        "from prometheus_client import Counter; "
        "Counter('marketplace_written_elsewhere', 'by another process').inc(3)"
    )
    subprocess.run(
        [sys.executable, "-c", writer],
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(shared)},
        check=True,
    )
    port = free_port()
    process = metrics_serve(
        tmp_path,
        PROMETHEUS_MULTIPROC_DIR=str(shared),
        MARKETPLACE_METRICS_PORT=str(port),
        MARKETPLACE_METRICS_TOKEN=TOKEN,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/metrics")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_the_listener_of_their_own_asks_for_the_token_too(listener: str) -> None:
    for authorization in (None, f"Bearer {TOKEN[:-1]}x", f"Basic {TOKEN}"):
        status, headers, body = get(f"{listener}/metrics", authorization)
        assert status == 401, authorization
        assert headers["Content-Type"] == "application/problem+json"
        assert headers["WWW-Authenticate"].startswith('Bearer realm="metrics"')
        assert "marketplace_" not in body

    status, headers, body = get(f"{listener}/metrics", f"Bearer {TOKEN}")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=")
    # What the other process counted, read from the shared folder.
    assert "marketplace_written_elsewhere_total 3.0" in body

    status, _, body = get(f"{listener}/admin/", f"Bearer {TOKEN}")
    assert status == 404
    assert "marketplace_" not in body


def test_the_listener_refuses_to_start_without_the_shared_folder(tmp_path: Path) -> None:
    process = metrics_serve(tmp_path, MARKETPLACE_METRICS_PORT=str(free_port()))
    _, stderr = process.communicate(timeout=60)

    assert process.returncode != 0
    assert b"Set PROMETHEUS_MULTIPROC_DIR" in stderr


def test_the_listener_refuses_to_start_without_a_port(tmp_path: Path) -> None:
    process = metrics_serve(tmp_path, PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    _, stderr = process.communicate(timeout=60)

    assert process.returncode != 0
    assert b"Set MARKETPLACE_METRICS_PORT" in stderr


def test_outside_dev_a_listener_of_their_own_serves_without_a_token(settings: Any) -> None:
    """MARKETPLACE_METRICS_PORT with no token is allowed in production: the listener's interface
    is what keeps it private, so it must then answer anyone who reaches it."""
    settings.SERVICE_ENV = "prod"
    settings.METRICS_TOKEN = ""

    assert scrape_refusal(None, "10.1.2.3", own_listener=True) is None
    refused = scrape_refusal(None, "10.1.2.3")
    assert refused is not None
    assert refused.status == 403
