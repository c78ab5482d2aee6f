"""A refund processed while the broker is down: the refund stands (no error for a change already
committed), and the revocation sweep revokes the license and withdraws the package once the
broker is back."""

import logging
from typing import Any

import pytest

from licensing.models import DeliveryStatus, LicenseStatus
from licensing.services import order_revoke, revocations_due
from licensing.tasks import revocation_sweep
from marketplace.models import User
from orders.models import OrderStatus
from tests.licensing.factories import order_delivered, order_disputed, order_refunded
from tests.marketplace.test_outages import broker_at, closed_port
from tests.support.worker import wait_until

pytestmark = pytest.mark.worker


def test_a_refund_while_the_broker_is_down_is_revoked_by_the_sweep(
    transactional_db: None, settings: Any, start_worker: Any, caplog: Any
) -> None:
    buyer = User.objects.create_user(email="buyer@example.com")
    delivered = order_delivered(buyer)
    real_broker = settings.CELERY_BROKER_URL

    broker_at(settings, f"redis://127.0.0.1:{closed_port()}/11")
    try:
        with caplog.at_level(logging.ERROR, logger="django.db.backends.base"):
            order = order_refunded(delivered.order)
    finally:
        broker_at(settings, real_broker)

    # The refund committed; only its hand-over to licensing was lost, and logged.
    assert order.status == OrderStatus.REFUNDED
    assert any("on_commit" in record.getMessage() for record in caplog.records)
    delivered.license.refresh_from_db()
    delivered.delivery.refresh_from_db()
    assert delivered.license.status == LicenseStatus.ACTIVE
    assert delivered.delivery.status == DeliveryStatus.READY
    assert revocations_due() == [(str(order.pk), "refunded")]

    worker = start_worker(purge=False)
    assert revocation_sweep.apply().get() == 1
    wait_until(
        lambda: (
            type(delivered.license).objects.get(pk=delivered.license.pk).status
            == LicenseStatus.REVOKED
        ),
        worker=worker,
    )
    wait_until(lambda: not revocations_due(), worker=worker)
    delivered.delivery.refresh_from_db()
    delivered.license.refresh_from_db()
    assert delivered.delivery.status == DeliveryStatus.WITHDRAWN
    assert delivered.license.revoked_reason == "refunded"


def test_due_are_refunded_or_disputed_orders_with_a_license_or_package_left(
    transactional_db: None,
) -> None:
    buyer = User.objects.create_user(email="buyer@example.com")
    kept = order_delivered(buyer)
    disputed = order_delivered(buyer)

    # No worker runs the hand-over the dispute sends: as good as lost.
    order_disputed(disputed.order)

    assert revocations_due() == [(str(disputed.order.pk), "disputed")]
    order_revoke(order_id=disputed.order.pk, reason="disputed")
    assert revocations_due() == []
    kept.license.refresh_from_db()
    assert kept.license.status == LicenseStatus.ACTIVE
