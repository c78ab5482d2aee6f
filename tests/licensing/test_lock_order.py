"""Licensing's services take the order's lock before any license or delivery row of it
(orders.locks), so they queue behind whoever holds the order instead of holding a row that
the order's holder will ask for next."""

import time

import psycopg
import pytest
from psycopg import sql

from licensing.models import Delivery, License
from licensing.services import LICENSING_WORKER, delivery_regenerate, license_revoke
from tests.licensing.factories import order_delivered
from tests.support.pg import backends_blocked_by, in_thread, order_row_locked, pg_connect

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def _wait_blocked_by(pid: int) -> None:
    deadline = time.monotonic() + 10
    while not backends_blocked_by(pid):
        assert time.monotonic() < deadline, "the service never waited on the order's lock"
        time.sleep(0.05)


def _row_is_free(table: str, row_id: object) -> bool:
    with pg_connect() as conn:
        try:
            query = sql.SQL("SELECT id FROM {} WHERE id = %s FOR UPDATE NOWAIT")
            conn.execute(query.format(sql.Identifier(table)), (row_id,))
        except psycopg.errors.LockNotAvailable:
            return False
        finally:
            conn.rollback()
    return True


@pytest.mark.parametrize(
    ("table", "row", "work"),
    [
        (
            "licensing_delivery",
            lambda delivered: delivered.delivery.pk,
            lambda delivered: delivery_regenerate(
                delivery_id=delivered.delivery.pk, reason="lost", actor=LICENSING_WORKER
            ),
        ),
        (
            "licensing_license",
            lambda delivered: delivered.license.pk,
            lambda delivered: license_revoke(
                license_id=delivered.license.pk, reason="leaked", actor=LICENSING_WORKER
            ),
        ),
    ],
    ids=["delivery_regenerate", "license_revoke"],
)
def test_the_order_is_locked_before_its_rows(buyer, table, row, work):
    delivered = order_delivered(buyer)

    with order_row_locked(delivered.order.pk) as pid:
        thread, outcome = in_thread(lambda: work(delivered))
        _wait_blocked_by(pid)
        # Waiting for the order, the service holds nothing of the order's own rows.
        assert _row_is_free(table, row(delivered))
    thread.join(timeout=30)

    assert not isinstance(outcome[0], Exception), outcome
    assert Delivery.objects.filter(order=delivered.order).count() == (
        2 if table == "licensing_delivery" else 1
    )
    assert License.objects.get(pk=delivered.license.pk).status == (
        "active" if table == "licensing_delivery" else "revoked"
    )
