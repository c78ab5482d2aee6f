"""A worker killed with SIGKILL while it uploads a delivery package: the upload is made to block
deterministically (the bucket is reached through a TCP proxy on loopback that lets the start of
the package's PUT through and then stalls), the worker is killed in it, and a new worker, sent
the delivery again by the fulfilment sweep once the dead attempt's heartbeat is stale, finishes
it: one delivery, one proof, and one stored package whose bytes are the ones the proof names.
The package is large enough to be uploaded in parts: the killed upload stays open on S3 until
the spool sweep aborts it."""

import contextlib
import hashlib
import io
import re
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.utils import timezone

from licensing import envelope
from licensing.keys import data_key_unwrap
from licensing.models import Delivery, DeliveryStatus, Proof
from licensing.services import delivery_context
from licensing.tasks import delivery_package, delivery_spool_sweep, fulfilment_sweep
from orders.models import Order
from orders.services import webhook_secrets
from tests.licensing.test_packaging import process_payments
from tests.orders.factories import order_checked_out, sku_for_sale
from tests.orders.stripe_events import session_event, signed
from tests.support.moto import KmsKey, S3Bucket
from tests.support.worker import WorkerProcess, wait_until

pytestmark = [pytest.mark.worker, pytest.mark.s3, pytest.mark.django_db(transaction=True)]

StartWorker = Callable[..., WorkerProcess]
ARTIFACT = bytes(range(256)) * 4096 * 9  # 9 MiB: past the 8 MiB multipart threshold
_PACKAGE_PUT = re.compile(rb"^PUT [^ ]*/deliveries/", re.MULTILINE)


class StallingProxy:
    """A TCP proxy in front of the S3 server. While `stall_uploads` is set, a request that
    PUTs a delivery package gets its first bytes through and then nothing more, either way:
    the uploader blocks, as it would on a network that stopped answering mid-upload."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.stall_uploads = threading.Event()
        self.stall_uploads.set()
        self.stalled = threading.Event()
        self._release = threading.Event()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            self._sockets += [client, upstream]
            threading.Thread(
                target=self._forward, args=(client, upstream, True), daemon=True
            ).start()
            threading.Thread(
                target=self._forward, args=(upstream, client, False), daemon=True
            ).start()

    def _forward(self, source: socket.socket, target: socket.socket, inspect: bool) -> None:
        try:
            while data := source.recv(65536):
                if inspect and self.stall_uploads.is_set() and _PACKAGE_PUT.search(data):
                    target.sendall(data[: len(data) // 2])  # half a request reaches S3
                    self.stalled.set()
                    self._release.wait()
                    return
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._release.set()
        self._listener.close()
        for sock in self._sockets:
            sock.close()


@pytest.fixture
def stalling_s3(
    s3_storage: S3Bucket, kms_key: KmsKey, settings: Any
) -> Iterator[tuple[S3Bucket, StallingProxy]]:
    """The delivery bucket (data keys from KMS), reached through a StallingProxy. Listed before
    any worker is started, so workers reach the bucket through the proxy."""
    host, port = s3_storage.endpoint.removeprefix("http://").split(":")
    proxy = StallingProxy((host, int(port)))
    default = settings.STORAGES["default"]
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {**default, "OPTIONS": {**default["OPTIONS"], "endpoint_url": proxy.endpoint}},
    }
    settings.DELIVERY_RETENTION_DAYS = 1
    try:
        yield s3_storage, proxy
    finally:
        proxy.close()


def released_order(client: Any, buyer: Any, publisher: Any) -> Order:
    """Paid through a signed webhook and posted to Finance in this process; the hand-over to
    licensing (order_fulfil) is sent to the broker when the posting commits."""
    sku = sku_for_sale(publisher, price=2500, content=ARTIFACT)
    order = order_checked_out(buyer, sku, key=f"key-{uuid.uuid4()}")
    body, header = signed(session_event("checkout.session.completed", order), webhook_secrets()[0])
    response = client.post(
        "/marketplace/stripe/webhook",
        data=body,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=header,
    )
    assert response.status_code == 200
    process_payments()
    order.refresh_from_db()
    assert order.delivery_state == "released"
    return order


def open_uploads(bucket: S3Bucket) -> list[dict[str, Any]]:
    return bucket.client.list_multipart_uploads(Bucket=bucket.name, Prefix="deliveries/").get(
        "Uploads", []
    )


def package_versions(bucket: S3Bucket) -> list[dict[str, Any]]:
    return bucket.client.list_object_versions(Bucket=bucket.name, Prefix="deliveries/").get(
        "Versions", []
    )


def test_a_worker_killed_during_upload_still_ends_in_exactly_one_delivery(
    stalling_s3: tuple[S3Bucket, StallingProxy],
    start_worker: StartWorker,
    settings: Any,
    client: Any,
    buyer: Any,
    publisher: Any,
) -> None:
    bucket, proxy = stalling_s3
    settings.DELIVERY_HEARTBEAT_SECONDS = 0.2
    settings.DELIVERY_STALE_SECONDS = 3
    order = released_order(client, buyer, publisher)

    # The first worker takes the hand-over from the queue, issues, and starts packaging.
    first = start_worker(name="-first", purge=False)
    assert proxy.stalled.wait(60), first.log()[-4000:]
    delivery = Delivery.objects.get(order=order)
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.PENDING, 1)
    assert "licensing.tasks.delivery_package" in first.log()
    first.kill()
    assert first.process.returncode == -9

    # Killed mid-upload: nothing delivered, nothing stored (S3 never had a whole request).
    delivery.refresh_from_db()
    assert (delivery.status, delivery.package_sha256) == (DeliveryStatus.PENDING, "")
    assert delivery.wrapped_key  # the data key was made and stored, wrapped, before the upload
    assert not Proof.objects.exists()
    assert package_versions(bucket) == []
    [killed_upload] = open_uploads(bucket)
    assert killed_upload["Key"] == f"deliveries/{order.pk}/{delivery.pk}.mkpkg"

    # The killed worker's message stays unacknowledged in Redis until the visibility timeout
    # (hours); the fulfilment sweep finds the delivery first, once its heartbeat is stale.
    proxy.stall_uploads.clear()
    second = start_worker(name="-second", purge=False)

    def heartbeat_stale() -> bool:
        beat = Delivery.objects.get(pk=delivery.pk).heartbeat_at
        assert beat is not None
        return (timezone.now() - beat).total_seconds() > settings.DELIVERY_STALE_SECONDS

    wait_until(heartbeat_stale, timeout=30)
    assert fulfilment_sweep.apply().get() == {"orders": 0, "deliveries": 1}
    wait_until(
        lambda: Delivery.objects.get(pk=delivery.pk).status == DeliveryStatus.READY,
        timeout=60,
        worker=second,
    )
    # The broker redelivering the killed worker's message later is one more run: a no-op.
    redelivered = delivery_package.delay(str(delivery.pk))
    wait_until(
        lambda: f"delivery_package[{redelivered.id}] succeeded" in second.log(), worker=second
    )

    delivery.refresh_from_db()
    assert Delivery.objects.filter(order=order).count() == 1
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.READY, 2)
    assert Proof.objects.filter(order=order).count() == 1
    [version] = package_versions(bucket)
    assert version["Key"] == delivery.storage_name
    body = bucket.client.get_object(Bucket=bucket.name, Key=delivery.storage_name)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == delivery.package_sha256
    assert Proof.objects.get().payload["package_sha256"] == delivery.package_sha256
    plaintext = io.BytesIO()
    envelope.decrypt_stream(
        io.BytesIO(body),
        plaintext,
        data_key=data_key_unwrap(
            delivery_id=str(delivery.pk),
            wrapped=bytes(delivery.wrapped_key),
            wrapping=delivery.key_wrapping,
        ),
        context=delivery_context(delivery),
    )
    assert plaintext.getvalue() == ARTIFACT

    # The killed upload's parts are still held on S3 (and billed) until the spool sweep.
    assert [upload["UploadId"] for upload in open_uploads(bucket)] == [killed_upload["UploadId"]]
    assert delivery_spool_sweep.apply().get() == {"files": 0, "uploads": 1}
    assert open_uploads(bucket) == []
