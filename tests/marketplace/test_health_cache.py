"""/health is answered from one probe run for MARKETPLACE_HEALTH_CACHE_SECONDS: many callers,
or many at once, cannot make the platform open a broker connection (or ask S3) per request;
/health/details probes afresh."""

import http.client
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import pytest

from marketplace import health

CONCURRENT = 16
HEALTH_TOKEN = "ht-8Kq2Zr5Xw1Lp7Nv4Bc9Md3Fg6Hj0Sa2T"


class SlowBroker:
    """Counts the connections the broker check opens; each is held a moment, then closed, so
    that the probes of concurrent requests would overlap."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Timer(0.3, conn.close).start()


@pytest.fixture
def broker(settings: Any) -> Iterator[SlowBroker]:
    server = SlowBroker()
    settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{server.port}/0"
    settings.HEALTH_CACHE_SECONDS = 60
    health.forget_report()
    yield server
    server.sock.close()
    health.forget_report()


@pytest.mark.django_db(transaction=True)
def test_concurrent_health_requests_wait_for_one_probe_run(
    live_server: Any, broker: SlowBroker
) -> None:
    url = urlsplit(live_server.url)
    barrier = threading.Barrier(CONCURRENT)

    def one(_: int) -> int:
        connection = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        try:
            connection.connect()
            barrier.wait(timeout=30)
            connection.request("GET", "/health")
            response = connection.getresponse()
            response.read()
            return response.status
        finally:
            connection.close()

    with ThreadPoolExecutor(CONCURRENT) as pool:
        statuses = Counter(pool.map(one, range(CONCURRENT)))
    time.sleep(0.1)

    assert statuses == Counter({503: CONCURRENT})
    assert broker.accepted == 1


@pytest.mark.django_db
def test_health_answers_from_the_last_run_and_the_details_probe_afresh(
    api_client: Any, broker: SlowBroker, settings: Any
) -> None:
    settings.HEALTH_TOKEN = HEALTH_TOKEN
    first = [api_client.get("/health").json() for _ in range(3)]
    probed = broker.accepted

    details = api_client.get("/health/details", HTTP_AUTHORIZATION=f"Bearer {HEALTH_TOKEN}")

    assert probed == 1
    assert first[0] == first[1] == first[2]
    assert first[0]["failed"] == ["broker"]
    assert details.json()["failed"] == ["broker"]
    assert broker.accepted == 2


@pytest.mark.django_db
def test_with_no_cache_every_request_probes(
    api_client: Any, broker: SlowBroker, settings: Any
) -> None:
    settings.HEALTH_CACHE_SECONDS = 0

    for _ in range(2):
        api_client.get("/health")

    assert broker.accepted == 2
