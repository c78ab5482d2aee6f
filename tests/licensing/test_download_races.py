"""Download links and what commits while one is being handed out: a withdrawal or a
regeneration that commits while GET /orders/{id}/delivery waits for the order's lock is seen
once the lock is taken (STYLE: re-read state after taking the lock)."""

import threading
import time

import pytest
from django.db import connection, transaction

from licensing.exceptions import DeliveryNotReady, DownloadGone
from licensing.models import Delivery, DownloadSession
from licensing.services import (
    LICENSING_WORKER,
    deliveries_withdraw_for_order,
    delivery_access,
    delivery_regenerate,
)
from tests.licensing.factories import order_delivered
from tests.support.pg import backends_blocked_by, in_thread

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def _committing_when_told(change) -> tuple[threading.Thread, threading.Event, list[int]]:
    """Runs `change` (a service that takes the order's lock) in a transaction of its own that
    stays open, holding the lock, until the event is set; the list gets its backend pid."""
    release, pid = threading.Event(), []

    def run() -> None:
        try:
            with transaction.atomic():
                change()
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_backend_pid()")
                    pid.append(cursor.fetchone()[0])
                release.wait(30)
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 10
    while not pid:
        assert time.monotonic() < deadline, "the change never took the order's lock"
        time.sleep(0.02)
    return thread, release, pid


@pytest.mark.parametrize(
    ("change", "refused"),
    [
        (
            lambda delivered: deliveries_withdraw_for_order(
                order_id=delivered.order.pk, reason="refunded", actor=LICENSING_WORKER
            ),
            DownloadGone,
        ),
        (
            lambda delivered: delivery_regenerate(
                delivery_id=delivered.delivery.pk, reason="lost", actor=LICENSING_WORKER
            ),
            DeliveryNotReady,
        ),
    ],
    ids=["withdrawn", "regenerated"],
)
def test_a_change_committed_while_the_link_waits_for_the_lock_is_seen(buyer, change, refused):
    delivered = order_delivered(buyer)
    holder, release, pid = _committing_when_told(lambda: change(delivered))

    # The delivery is read (still ready: the change is not committed), then the order's lock
    # is waited for.
    asker, outcome = in_thread(
        lambda: delivery_access(
            order_id=delivered.order.pk, buyer=buyer, ip="192.0.2.1", user_agent="test"
        )
    )
    deadline = time.monotonic() + 10
    while not backends_blocked_by(pid[0]):
        assert time.monotonic() < deadline, "the link never waited on the order's lock"
        time.sleep(0.02)
    release.set()
    holder.join(30)
    asker.join(30)

    [answer] = outcome
    assert isinstance(answer, refused), answer
    assert not DownloadSession.objects.filter(delivery=delivered.delivery).exists()
    assert Delivery.objects.get(pk=delivered.delivery.pk).downloads == 0
