"""A worker killed with SIGKILL in the middle of streaming a package (a real worker process:
tiny chunks make packaging slow enough to be caught at it). While the dead attempt's heartbeat
is fresh, the fulfilment sweep leaves the delivery alone; at the first sweep after the
heartbeat went stale it sends the delivery again, a new worker takes it over, and the end is
one ready delivery, one proof, one package in storage and, once the spool sweep has run, no
partial file."""

import hashlib
import io
import os
import time
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from licensing import envelope
from licensing.models import Delivery, DeliveryStatus, Proof
from licensing.services import delivery_context, order_fulfil
from licensing.tasks import delivery_package, delivery_spool_sweep, fulfilment_sweep
from tests.licensing.test_packaging import data_key_of, released_order
from tests.orders.factories import sku_for_sale
from tests.support.worker import WorkerProcess, wait_until

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

# 4 MiB in 4-byte chunks: a million chunks, a few seconds of packaging.
ARTIFACT = os.urandom(4 * 1024 * 1024)
CHUNK = 4
HEARTBEAT = 0.2
STALE = 4.0
SWEEP_PERIOD = 1.0


def stored_files(settings: Any, delivery: Delivery) -> list[Path]:
    """The delivery's files in storage, packages and partial files alike (the data folder is
    the session's: other tests' files are there too)."""
    root = Path(settings.DATA_DIR) / "deliveries"
    return sorted(
        path
        for path in root.rglob("*")
        if path.is_file()
        and (path.parent.name == str(delivery.order_id) or path.name.startswith(str(delivery.pk)))
    )


def partial_files_of(settings: Any, delivery: Delivery) -> list[Path]:
    return [path for path in stored_files(settings, delivery) if path.suffix == ".part"]


def test_a_worker_killed_mid_package_is_taken_over_once_its_heartbeat_is_stale(
    start_worker: Any, settings: Any, client: Any, buyer: Any, publisher: Any
) -> None:
    settings.DELIVERY_CHUNK_BYTES = CHUNK
    settings.DELIVERY_HEARTBEAT_SECONDS = HEARTBEAT
    settings.DELIVERY_STALE_SECONDS = STALE
    order = released_order(client, buyer, sku_for_sale(publisher, price=900, content=ARTIFACT))
    # Creates the delivery; its packaging task goes to the broker when that commits.
    delivery = Delivery.objects.get(pk=order_fulfil(order_id=order.pk)["delivery"])

    first: WorkerProcess = start_worker(name="-first", purge=False)

    def streaming_and_beating() -> bool:
        delivery.refresh_from_db()
        partial = partial_files_of(settings, delivery)
        return (
            delivery.heartbeat_at is not None
            and delivery.attempted_at is not None
            and delivery.heartbeat_at > delivery.attempted_at
            and bool(partial)
            and partial[0].stat().st_size > 0
        )

    wait_until(streaming_and_beating, timeout=60, worker=first)
    first.kill()
    assert first.process.returncode == -9

    # Killed mid-stream: nothing delivered, its partial file left behind, its heartbeat frozen.
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.PENDING, 1)
    last_beat = delivery.heartbeat_at
    assert last_beat is not None
    [orphan] = partial_files_of(settings, delivery)
    assert orphan.name.startswith(f"{delivery.pk}.1.")
    assert not [path for path in stored_files(settings, delivery) if path.suffix == ".mkpkg"]
    assert not Proof.objects.exists()

    # A new worker. The killed one's message stays unacknowledged (on Redis until its
    # visibility timeout of hours); the sweep, run as beat would, is what brings it back.
    second = start_worker(name="-second", purge=False)
    sweeps: list[tuple[float, float, int]] = []  # heartbeat age before, after; sent
    while not (sweeps and sweeps[-1][2]):
        before = (timezone.now() - last_beat).total_seconds()
        sent = fulfilment_sweep.apply().get()["deliveries"]
        sweeps.append((before, (timezone.now() - last_beat).total_seconds(), sent))
        assert len(sweeps) < 60, sweeps
        if not sent:
            time.sleep(SWEEP_PERIOD)
    # The sweeps that ran while the heartbeat was fresh sent nothing; the first one after it
    # went stale sent the delivery: taken over within STALE + SWEEP_PERIOD of the last beat.
    *fresh, (_, taken_over_at, _) = sweeps
    assert taken_over_at >= STALE
    assert all(before < STALE for before, _, _ in fresh), sweeps
    wait_until(
        lambda: Delivery.objects.get(pk=delivery.pk).status == DeliveryStatus.READY,
        timeout=120,
        worker=second,
    )

    # A late redelivery of the killed worker's message is one more run: a no-op.
    redelivered = delivery_package.delay(str(delivery.pk))
    wait_until(
        lambda: f"delivery_package[{redelivered.id}] succeeded" in second.log(), worker=second
    )

    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.READY, 2)
    assert Proof.objects.filter(order=order).count() == 1
    # One package in storage, the proof's; the dead attempt's partial file waits for the sweep.
    packages = [path for path in stored_files(settings, delivery) if path.suffix == ".mkpkg"]
    assert [path.name for path in packages] == [f"{delivery.pk}.mkpkg"]
    assert partial_files_of(settings, delivery) == [orphan]
    body = packages[0].read_bytes()
    assert hashlib.sha256(body).hexdigest() == delivery.package_sha256
    assert Proof.objects.get().payload["package_sha256"] == delivery.package_sha256
    plaintext = io.BytesIO()
    envelope.decrypt_stream(
        io.BytesIO(body),
        plaintext,
        data_key=data_key_of(delivery),
        context=delivery_context(delivery),
    )
    assert plaintext.getvalue() == ARTIFACT

    # The spool sweep, as beat runs it: the orphan is older than the stale time and no live
    # attempt holds it.
    assert delivery_spool_sweep.apply().get()["files"] >= 1
    assert stored_files(settings, delivery) == packages
