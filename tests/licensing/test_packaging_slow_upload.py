"""A live upload to S3 over a slow link keeps its delivery: it beats as bytes are sent, not
only when s3transfer reads a part of the package, so another task for the delivery finds the
heartbeat fresh and leaves it alone. The link is a TCP relay in front of the moto server that
passes what the client sends at 1 MiB/s a connection (answers at full speed)."""

import contextlib
import os
import socket
import threading
import time
from typing import Any

import pytest

from licensing.models import Delivery, DeliveryStatus, Proof
from licensing.services import delivery_package, order_fulfil
from marketplace.storages import s3_storage as s3_storage_config
from tests.catalog.factories import TEST_ACTOR
from tests.licensing.test_packaging import released_order
from tests.orders.factories import sku_for_sale
from tests.support.moto import REGION, S3Bucket

pytestmark = [pytest.mark.s3, pytest.mark.django_db(transaction=True)]

# Above the 8 MiB multipart threshold: s3transfer reads both parts when the upload starts,
# then sends them for about 8 s.
ARTIFACT = os.urandom(9 * 1024 * 1024)
RATE = 1024 * 1024  # bytes a second per connection, client to server
STALE = 2.0


class SlowRelay:
    """Relays TCP connections to `upstream`, passing client bytes at RATE; counts them."""

    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.removeprefix("http://").partition(":")
        self._upstream = (host, int(port))
        self._server = socket.socket()
        # Small buffers, so what the client has sent is what the relay has passed on.
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen()
        self.endpoint = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self.sent = 0
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            server = socket.create_connection(self._upstream)
            threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()

    def _pipe(self, source: socket.socket, target: socket.socket, slow: bool) -> None:
        try:
            while data := source.recv(65536):
                if slow:
                    time.sleep(len(data) / RATE)
                    with self._lock:
                        self.sent += len(data)
                target.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, target):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed = True
        self._server.close()


def test_a_slow_live_upload_is_not_taken_over(
    s3_storage: S3Bucket, settings: Any, client: Any, buyer: Any, publisher: Any
) -> None:
    settings.DELIVERY_HEARTBEAT_SECONDS = 0.1
    settings.DELIVERY_STALE_SECONDS = STALE
    order = released_order(client, buyer, sku_for_sale(publisher, price=900, content=ARTIFACT))
    delivery = Delivery.objects.get(pk=order_fulfil(order_id=order.pk)["delivery"])
    relay = SlowRelay(s3_storage.endpoint)
    settings.STORAGES = {
        **settings.STORAGES,
        "default": s3_storage_config(
            bucket=s3_storage.name, endpoint_url=relay.endpoint, region=REGION, kms_key_id=""
        ),
    }
    outcome: list[Any] = []

    def package() -> None:
        from django.db import connection

        try:
            outcome.append(delivery_package(delivery_id=delivery.pk, actor=TEST_ACTOR))
        except BaseException as exc:  # the test reads it
            outcome.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=package)
    thread.start()
    try:
        # The package's bytes are going out (more than the requests before them)...
        deadline = time.monotonic() + 30
        while relay.sent < 1024 * 1024:
            assert time.monotonic() < deadline, outcome
            assert thread.is_alive(), outcome
            time.sleep(0.02)
        # ...and have been for well past the stale time, the upload still under way.
        time.sleep(1.5 * STALE)
        assert thread.is_alive(), outcome
        assert relay.sent < len(ARTIFACT)

        # The sweep sends the delivery again: the live attempt still holds it.
        assert delivery_package(delivery_id=delivery.pk, actor=TEST_ACTOR) == "pending"
        assert Delivery.objects.get(pk=delivery.pk).attempts == 1
        thread.join(60)
    finally:
        relay.close()

    assert outcome == [DeliveryStatus.READY]
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("ready", 1)
    assert Proof.objects.filter(delivery=delivery).count() == 1
