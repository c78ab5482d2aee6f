"""The rate-limit counters' store: what a request costs while Redis does not answer, and
that a refused request is counted against no limit."""

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from marketplace import ratelimit


@pytest.fixture(autouse=True)
def _fresh_counters() -> None:
    ratelimit.local_counters.clear()


class SilentServer:
    """Accepts TCP connections and never answers: a Redis whose replies are lost."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self._held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self._held:
            conn.close()


@pytest.fixture
def silent_redis(settings: Any) -> Iterator[SilentServer]:
    server = SilentServer()
    settings.CACHES = {
        "default": {
            "BACKEND": "django_prometheus.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{server.port}/2",
            "KEY_PREFIX": f"rate-limit-silent-{uuid.uuid4().hex}",
            "OPTIONS": {
                "CLIENT_CLASS": "django_redis.client.DefaultClient",
                "SOCKET_CONNECT_TIMEOUT": 0.3,
                "SOCKET_TIMEOUT": 0.3,
                "IGNORE_EXCEPTIONS": True,
            },
        }
    }
    yield server
    server.close()


def test_a_store_that_times_out_is_not_asked_again_for_the_time_a_refused_write_is_told(
    silent_redis: SilentServer,
) -> None:
    # The first request waits for the socket timeout; the ones after it, for as long as a
    # refused write is told to wait (Retry-After), are answered without asking the store.
    ratelimit.hit("anon", "198.51.100.7", write=False)
    asked = silent_redis.accepted
    assert asked >= 1

    time.sleep(1.5)  # longer than the store used to be taken as down
    ratelimit.hit("anon", "198.51.100.7", write=False)
    with pytest.raises(ratelimit.CacheUnavailable) as refused:
        ratelimit.hit("buyer_write", "u:1", write=True)

    assert silent_redis.accepted == asked
    assert refused.value.extra["retry_after"] >= 2
