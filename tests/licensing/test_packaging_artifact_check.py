"""Packaging refuses an artifact whose stored bytes are not the ones recorded, whatever changed
(a byte in the last chunk, a byte added, a byte cut, another file of the same size), before
anything is stored or handed to the buyer: locally and on S3. The artifact's SHA-256 is
computed in the same pass that encrypts it, so no packaging path can leave the check out."""

import base64
import os
from collections.abc import Callable
from typing import Any

import pytest
from django.core.files.storage import default_storage

from audit.models import AuditEvent
from catalog.models import Sku
from licensing.models import Delivery, DeliveryStatus, DownloadSession, Proof
from licensing.services import order_fulfil
from licensing.storage import delivery_name, partial_files
from licensing.tasks import delivery_package as delivery_package_task
from tests.licensing.test_packaging import data_key_of, package_path, released_order
from tests.orders.factories import sku_for_sale
from tests.support.moto import S3Bucket

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.filterwarnings("ignore:EdDSA is deprecated"),
]

ARTIFACT = os.urandom(300_000)
CHUNK = 64 * 1024  # five chunks: the last one is short


def flip_last_byte(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0x01])


CHANGES: dict[str, Callable[[bytes], bytes]] = {
    "a byte of the last chunk flipped": flip_last_byte,
    "a byte added": lambda data: data + b"\x00",
    "a byte cut": lambda data: data[:-1],
    "another file of the same size": lambda data: os.urandom(len(data)),
}


@pytest.fixture
def sku(publisher: Any, settings: Any) -> Sku:
    settings.DELIVERY_CHUNK_BYTES = CHUNK
    return sku_for_sale(publisher, price=1500, content=ARTIFACT)


def pending_delivery(client: Any, buyer: Any, sku: Sku) -> Delivery:
    order = released_order(client, buyer, sku)
    return Delivery.objects.get(pk=order_fulfil(order_id=order.pk)["delivery"])


def assert_refused_and_nothing_handed_out(delivery: Delivery, buyer_client: Any) -> None:
    """The task suspends the delivery at once; the buyer gets a 409 naming no link or key."""
    assert delivery_package_task.apply(args=[str(delivery.pk)]).get() == "suspended"

    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.SUSPENDED, 1)
    assert "not the recorded" in delivery.last_error
    assert (delivery.storage_name, delivery.package_sha256, delivery.package_size) == ("", "", None)
    assert not Proof.objects.exists()
    event = AuditEvent.objects.get(action="delivery.suspended", subject_id=str(delivery.pk))
    assert event.data["permanent"] is True

    response = buyer_client.get(f"/api/v1/orders/{delivery.order_id}/delivery")
    assert response.status_code == 409, response.content
    assert response["Content-Type"] == "application/problem+json"
    body = response.json()
    assert "download_url" not in body
    assert "decryption_key" not in body
    assert "wrapped_key" not in body
    key = base64.urlsafe_b64encode(data_key_of(delivery)).rstrip(b"=")
    assert key not in response.content
    assert not DownloadSession.objects.exists()


@pytest.mark.parametrize("change", list(CHANGES), ids=list(CHANGES))
def test_a_changed_local_artifact_is_refused_before_anything_is_stored(
    change: str, client: Any, buyer: Any, buyer_client: Any, sku: Sku
) -> None:
    delivery = pending_delivery(client, buyer, sku)
    path = default_storage.path(sku.artifact.storage_key)
    with open(path, "rb") as stored:
        changed = CHANGES[change](stored.read())
    with open(path, "wb") as stored:
        stored.write(changed)

    assert_refused_and_nothing_handed_out(delivery, buyer_client)

    name = delivery_name(order_id=str(delivery.order_id), delivery_id=str(delivery.pk))
    assert not os.path.exists(package_path(name))
    assert partial_files() == []  # the attempt's spool file went with it


@pytest.mark.parametrize("change", list(CHANGES), ids=list(CHANGES))
def test_a_changed_artifact_on_s3_is_refused_before_anything_is_uploaded(
    change: str, s3_storage: S3Bucket, client: Any, buyer: Any, buyer_client: Any, sku: Sku
) -> None:
    delivery = pending_delivery(client, buyer, sku)
    s3, bucket = s3_storage.client, s3_storage.name
    key = default_storage._normalize_name(sku.artifact.storage_key)
    original = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert original == ARTIFACT
    # A new version under the same key: what the storage hands out from now on.
    s3.put_object(Bucket=bucket, Key=key, Body=CHANGES[change](original))

    assert_refused_and_nothing_handed_out(delivery, buyer_client)

    listed = s3.list_object_versions(Bucket=bucket, Prefix="deliveries/")
    assert listed.get("Versions", []) == []
    assert s3.list_multipart_uploads(Bucket=bucket, Prefix="deliveries/").get("Uploads", []) == []
