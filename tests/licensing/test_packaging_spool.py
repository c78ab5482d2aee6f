"""Partial package files: an attempt that fails, or loses its delivery mid-stream, removes its
own; the spool sweep removes those a killed worker left (and, on S3, its multipart uploads)
once they are older than the stale time, and keeps what a live attempt is still writing."""

import os
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.files.storage import default_storage
from django.utils import timezone

from catalog.models import Sku
from licensing.models import Delivery, DeliveryStatus, Proof
from licensing.services import (
    AttemptSuperseded,
    PackagingFailed,
    deliveries_withdraw_for_order,
    delivery_package,
    delivery_spool_sweep,
    order_fulfil,
)
from licensing.tasks import delivery_spool_sweep as delivery_spool_sweep_task
from tests.catalog.factories import TEST_ACTOR
from tests.licensing.test_packaging import released_order
from tests.orders.factories import sku_for_sale
from tests.support.moto import S3Bucket

ARTIFACT = os.urandom(256 * 1024)


def delivery_files(settings: Any) -> list[Path]:
    """Every file under the local delivery storage: packages and partial files alike."""
    root = Path(settings.DATA_DIR) / "deliveries"
    return sorted(path for path in root.rglob("*") if path.is_file())


def partial_dir(settings: Any) -> Path:
    return Path(settings.DATA_DIR) / "deliveries" / "deliveries" / ".partial"


@pytest.fixture
def sku(publisher: Any) -> Sku:
    return sku_for_sale(publisher, price=1500, content=ARTIFACT)


def pending_delivery(client: Any, buyer: Any, sku: Sku) -> Delivery:
    order = released_order(client, buyer, sku)
    return Delivery.objects.get(pk=order_fulfil(order_id=order.pk)["delivery"])


@pytest.mark.django_db
def test_a_failed_attempt_leaves_no_partial_file(
    client: Any, buyer: Any, sku: Sku, settings: Any
) -> None:
    delivery = pending_delivery(client, buyer, sku)
    before = set(delivery_files(settings))
    # The stored artifact no longer matches its hash: found once the whole package is written.
    with open(default_storage.path(sku.artifact.storage_key), "r+b") as stored:
        stored.seek(1000)
        byte = stored.read(1)
        stored.seek(1000)
        stored.write(bytes([byte[0] ^ 0x01]))

    with pytest.raises(PackagingFailed):
        delivery_package(delivery_id=delivery.pk, actor=TEST_ACTOR)

    assert set(delivery_files(settings)) == before
    delivery.refresh_from_db()
    # It let go of the delivery: the task's own retry is not refused as a duplicate.
    assert (delivery.attempts, delivery.heartbeat_at) == (1, None)


@pytest.mark.django_db(transaction=True)
def test_an_attempt_whose_delivery_is_withdrawn_mid_stream_stops_and_leaves_nothing(
    client: Any, buyer: Any, publisher: Any, settings: Any
) -> None:
    # 1 MiB in 4-byte chunks: long enough to be withdrawn from under it.
    settings.DELIVERY_CHUNK_BYTES = 4
    settings.DELIVERY_HEARTBEAT_SECONDS = 0.05
    artifact_sku = sku_for_sale(publisher, price=900, content=os.urandom(1024 * 1024))
    delivery = pending_delivery(client, buyer, artifact_sku)
    outcome: list[BaseException | str] = []

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

    def streaming_and_beating() -> bool:
        now = Delivery.objects.get(pk=delivery.pk)
        return (
            any(partial_dir(settings).glob(f"{delivery.pk}.1.*.part"))
            and now.heartbeat_at is not None
            and now.attempted_at is not None
            and now.heartbeat_at > now.attempted_at
        )

    deadline = time.monotonic() + 30
    while not streaming_and_beating():
        assert time.monotonic() < deadline, outcome
        assert thread.is_alive(), outcome
        time.sleep(0.02)
    deliveries_withdraw_for_order(order_id=delivery.order_id, reason="refunded", actor=TEST_ACTOR)
    thread.join(30)

    [raised] = outcome
    assert isinstance(raised, AttemptSuperseded), raised
    assert Delivery.objects.get(pk=delivery.pk).status == DeliveryStatus.WITHDRAWN
    assert not [path for path in delivery_files(settings) if path.name.startswith(str(delivery.pk))]
    assert not Proof.objects.exists()


def aged(path: Path, seconds: float) -> Path:
    then = time.time() - seconds
    os.utime(path, (then, then))
    return path


@pytest.mark.django_db
def test_the_spool_sweep_removes_orphaned_partial_files_and_keeps_live_ones(
    client: Any, buyer: Any, sku: Sku, settings: Any, other_buyer: Any
) -> None:
    settings.DELIVERY_STALE_SECONDS = 60
    live = pending_delivery(client, buyer, sku)
    # Attempt 2 is on it, beating; attempt 1 died before it.
    Delivery.objects.filter(pk=live.pk).update(
        attempts=2,
        attempted_at=timezone.now() - timedelta(minutes=10),
        heartbeat_at=timezone.now() - timedelta(seconds=5),
    )
    dead = pending_delivery(client, other_buyer, sku)
    Delivery.objects.filter(pk=dead.pk).update(
        attempts=1,
        attempted_at=timezone.now() - timedelta(minutes=10),
        heartbeat_at=timezone.now() - timedelta(minutes=5),
    )
    folder = partial_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    made = {
        # A killed attempt's file, its heartbeat long stale.
        "orphan": (folder / f"{dead.pk}.1.abc123.part", 300),
        # The live delivery's earlier, killed attempt.
        "earlier": (folder / f"{live.pk}.1.def456.part", 300),
        # The live attempt's file, last written 2 minutes ago (it is uploading, say).
        "live": (folder / f"{live.pk}.2.ghi789.part", 120),
        # A file just written, whoever owns it.
        "fresh": (folder / f"{uuid.uuid4()}.1.jkl012.part", 0),
        # A copy made by package_store for a package that was no spool file.
        "store": (folder / "store.mno345.part", 300),
    }
    for path, age in made.values():
        path.write_bytes(b"partial")
        aged(path, age)

    assert delivery_spool_sweep_task.apply().get() == {"files": 3, "uploads": 0}

    assert sorted(folder.iterdir()) == sorted([made["live"][0], made["fresh"][0]])
    # Once the live attempt stops beating, its file goes too.
    Delivery.objects.filter(pk=live.pk).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    assert delivery_spool_sweep() == {"files": 1, "uploads": 0}
    assert list(folder.iterdir()) == [made["fresh"][0]]
    made["fresh"][0].unlink()  # the data folder is the session's


@pytest.mark.s3
@pytest.mark.django_db
def test_on_s3_the_spool_sweep_aborts_multipart_uploads_no_live_attempt_holds(
    s3_storage: S3Bucket, client: Any, buyer: Any, other_buyer: Any, sku: Sku, settings: Any
) -> None:
    settings.DELIVERY_STALE_SECONDS = 60
    live = pending_delivery(client, buyer, sku)
    dead = pending_delivery(client, other_buyer, sku)
    now = timezone.now()
    Delivery.objects.filter(pk=live.pk).update(
        attempts=2, attempted_at=now, heartbeat_at=now - timedelta(seconds=5)
    )
    Delivery.objects.filter(pk=dead.pk).update(
        attempts=1,
        attempted_at=now - timedelta(minutes=10),
        heartbeat_at=now - timedelta(minutes=5),
    )

    def upload_of(delivery: Delivery) -> str:
        key = f"deliveries/{delivery.order_id}/{delivery.pk}.mkpkg"
        return s3_storage.client.create_multipart_upload(Bucket=s3_storage.name, Key=key)[
            "UploadId"
        ]

    def uploads_left() -> set[str]:
        listed = s3_storage.client.list_multipart_uploads(Bucket=s3_storage.name)
        return {upload["UploadId"] for upload in listed.get("Uploads", [])}

    # A killed worker's upload; two of the live delivery (its attempt's, an earlier one's).
    dead_upload, live_uploads = upload_of(dead), {upload_of(live), upload_of(live)}
    # moto dates every upload 2010: all count as older than the stale time.
    assert delivery_spool_sweep() == {"files": 0, "uploads": 1}
    assert uploads_left() == live_uploads
    assert dead_upload not in uploads_left()

    # The live attempt finishes (or dies): the leftovers go at the next sweep.
    Delivery.objects.filter(pk=live.pk).update(status=DeliveryStatus.READY, heartbeat_at=None)
    assert delivery_spool_sweep() == {"files": 0, "uploads": 2}
    assert uploads_left() == set()


@pytest.mark.s3
@pytest.mark.django_db
def test_on_s3_an_upload_gone_since_it_was_listed_does_not_stop_the_sweep(
    s3_storage: S3Bucket,
    client: Any,
    buyer: Any,
    other_buyer: Any,
    sku: Sku,
    settings: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from django.core.files.storage import storages

    settings.DELIVERY_STALE_SECONDS = 60
    dead = [pending_delivery(client, who, sku) for who in (buyer, other_buyer)]
    Delivery.objects.filter(pk__in=[d.pk for d in dead]).update(
        attempts=1,
        attempted_at=timezone.now() - timedelta(minutes=10),
        heartbeat_at=timezone.now() - timedelta(minutes=5),
    )
    for delivery in dead:
        s3_storage.client.create_multipart_upload(
            Bucket=s3_storage.name, Key=f"deliveries/{delivery.order_id}/{delivery.pk}.mkpkg"
        )
    gone: list[str] = []

    def meanwhile(params: dict[str, Any], **_: Any) -> None:
        # Between the sweep's listing and its first abort, the upload ends elsewhere (its
        # attempt finished, or another sweep aborted it): S3 answers NoSuchUpload.
        if not gone:
            gone.append(params["UploadId"])
            s3_storage.client.abort_multipart_upload(
                Bucket=s3_storage.name, Key=params["Key"], UploadId=params["UploadId"]
            )

    events = storages["default"].bucket.meta.client.meta.events
    events.register("before-parameter-build.s3.AbortMultipartUpload", meanwhile)
    try:
        assert delivery_spool_sweep() == {"files": 0, "uploads": 1}
    finally:
        events.unregister("before-parameter-build.s3.AbortMultipartUpload", meanwhile)

    assert len(gone) == 1
    # S3's NoSuchUpload is expected, not a failure worth a warning.
    assert not [r for r in caplog.records if "not aborted" in r.getMessage()]
    assert not s3_storage.client.list_multipart_uploads(Bucket=s3_storage.name).get("Uploads")
