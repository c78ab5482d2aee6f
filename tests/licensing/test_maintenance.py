"""MAINTENANCE_MODE=1: no license, delivery or proof is issued while it is on; released orders
and pending deliveries wait, and the fulfilment sweep resumes them once it is off. Reads (the
orders API, the JWKS, license verification, downloads of what was delivered) go on."""

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from catalog.models import Sku
from config.celery import app
from licensing.models import Delivery, DeliveryStatus, License, Proof
from licensing.services import (
    delivery_package,
    delivery_regenerate,
    fulfilment_due,
    order_fulfil,
)
from licensing.tasks import delivery_package as delivery_package_task
from licensing.tasks import fulfilment_sweep
from licensing.tasks import order_fulfil as order_fulfil_task
from marketplace.exceptions import Conflict
from orders.models import Order
from tests.catalog.factories import TEST_ACTOR
from tests.licensing.test_packaging import released_order
from tests.orders.factories import sku_for_sale

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.filterwarnings("ignore:EdDSA is deprecated"),
]

ARTIFACT = b"maintenance window artifact " * 1000


@pytest.fixture
def sku(publisher: Any) -> Sku:
    return sku_for_sale(publisher, price=900, content=ARTIFACT)


@pytest.fixture
def eager_tasks() -> Iterator[None]:
    """Tasks sent with .delay run at once in this process, so that what the sweep sends is
    done before the test looks (a real worker does the same in tests/flows)."""
    saved = (app.conf.task_always_eager, app.conf.task_eager_propagates)
    app.conf.task_always_eager, app.conf.task_eager_propagates = True, True
    yield
    app.conf.task_always_eager, app.conf.task_eager_propagates = saved


def issued_actions(order: Order) -> list[str]:
    return list(
        AuditEvent.objects.filter(action__in=["license.issued", "delivery.created"])
        .filter(data__order=str(order.pk))
        .values_list("action", flat=True)
    )


def test_maintenance_issues_no_license_delivery_or_proof_and_the_order_stays_released(
    client: Any, buyer: Any, sku: Sku, settings: Any
) -> None:
    order = released_order(client, buyer, sku)
    settings.MAINTENANCE_MODE = True

    result = order_fulfil_task.apply(args=[str(order.pk)], kwargs={"reason": "released"}).get()

    assert result == {"order": str(order.pk), "skipped": "maintenance"}
    order.refresh_from_db()
    assert (order.status, order.delivery_state) == ("paid", "released")
    assert not License.objects.exists()
    assert not Delivery.objects.exists()
    assert not Proof.objects.exists()
    assert issued_actions(order) == []
    # The sweep does not send anything either while maintenance is on.
    assert fulfilment_sweep.apply().get() == {"orders": 0, "deliveries": 0}


def test_pending_deliveries_stay_pending_during_maintenance(
    client: Any, buyer: Any, sku: Sku, settings: Any
) -> None:
    order = released_order(client, buyer, sku)
    delivery = Delivery.objects.get(pk=order_fulfil(order_id=order.pk)["delivery"])
    settings.MAINTENANCE_MODE = True

    assert delivery_package_task.apply(args=[str(delivery.pk)]).get() == "maintenance"
    assert delivery_package(delivery_id=delivery.pk, actor=TEST_ACTOR) == "maintenance"

    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.attempted_at) == ("pending", 0, None)
    assert delivery.wrapped_key == b""  # not even a data key was made
    assert not Proof.objects.exists()
    with pytest.raises(Conflict, match="Maintenance"):
        delivery_regenerate(delivery_id=delivery.pk, reason="now", actor=TEST_ACTOR)
    assert Delivery.objects.count() == 1


def test_the_sweep_resumes_waiting_orders_and_deliveries_when_maintenance_ends(
    client: Any,
    buyer: Any,
    sku: Sku,
    settings: Any,
    eager_tasks: None,
    django_capture_on_commit_callbacks: Any,
) -> None:
    # One order whose delivery was created but never packaged, and one whose hand-over came
    # during maintenance (nothing issued). Checkout itself is closed during maintenance.
    first = released_order(client, buyer, sku)
    order_fulfil(order_id=first.pk)
    second = released_order(client, buyer, sku)
    settings.MAINTENANCE_MODE = True
    assert order_fulfil_task.apply(args=[str(second.pk)]).get()["skipped"] == "maintenance"
    Delivery.objects.update(created_at=timezone.now() - timedelta(minutes=5))

    settings.MAINTENANCE_MODE = False
    with django_capture_on_commit_callbacks(execute=True):
        sent = fulfilment_sweep.apply().get()

    assert sent == {"orders": 1, "deliveries": 1}
    for order in (first, second):
        assert License.objects.filter(order=order, status="active").count() == 1
        [delivery] = Delivery.objects.filter(order=order)
        assert delivery.status == DeliveryStatus.READY, delivery.last_error
        assert Proof.objects.filter(delivery=delivery).count() == 1
    # Nothing is left for the next sweep.
    assert fulfilment_sweep.apply().get() == {"orders": 0, "deliveries": 0}


def test_a_pending_delivery_is_swept_only_once_it_waited_the_configured_time(
    client: Any, buyer: Any, sku: Sku, settings: Any
) -> None:
    order = released_order(client, buyer, sku)
    delivery = Delivery.objects.get(pk=order_fulfil(order_id=order.pk)["delivery"])

    # Just created: its task may still be on its way.
    assert fulfilment_due() == ([], [])
    settings.DELIVERY_NEVER_STARTED_SECONDS = 0
    assert fulfilment_due() == ([], [str(delivery.pk)])
    # An attempt began recently: a worker may be on it.
    Delivery.objects.filter(pk=delivery.pk).update(attempted_at=timezone.now())
    assert fulfilment_due() == ([], [])
    settings.DELIVERY_ABANDONED_SECONDS = 0
    assert fulfilment_due() == ([], [str(delivery.pk)])


def test_reads_go_on_during_maintenance(
    client: Any, buyer: Any, buyer_client: Any, sku: Sku, settings: Any
) -> None:
    order = released_order(client, buyer, sku)
    delivery = Delivery.objects.get(pk=order_fulfil(order_id=order.pk)["delivery"])
    delivery_package(delivery_id=delivery.pk, actor=TEST_ACTOR)
    license = License.objects.get(order=order)
    proof = Proof.objects.get(delivery=delivery)
    settings.MAINTENANCE_MODE = True

    shown = buyer_client.get(f"/api/v1/orders/{order.pk}")
    assert shown.status_code == 200
    assert (shown.json()["delivery"], shown.json()["proof"]) == ("released", str(proof.pk))
    jwks = client.get("/.well-known/jwks.json")
    assert jwks.status_code == 200
    assert license.kid in {key["kid"] for key in jwks.json()["keys"]}
    verified = client.post(
        "/api/v1/licenses/verify", {"token": license.token}, content_type="application/json"
    )
    assert (verified.status_code, verified.json()["valid"]) == (200, True)
    assert buyer_client.get(f"/api/v1/orders/{order.pk}/license").status_code == 200
    served = buyer_client.get(f"/api/v1/orders/{order.pk}/delivery")
    assert served.status_code == 200
    assert served.json()["sha256"] == Delivery.objects.get(pk=delivery.pk).package_sha256
    assert buyer_client.get(f"/api/v1/proofs/{proof.pk}").status_code == 200
