"""Packaging attempts and who holds the delivery: a delivery whose attempts keep dying is
suspended at MARKETPLACE_DELIVERY_MAX_ATTEMPTS instead of being taken over for ever; a
takeover is logged with the stale heartbeat; an attempt taken over can neither finish the
delivery nor record its failure over the live attempt's. Each attempt here is the upload step
of the service (delivery_package_upload) left unfinished, as a worker killed after it would."""

import logging
from typing import Any

import pytest

from audit.models import AuditEvent
from licensing.models import Delivery, DeliveryStatus, Proof
from licensing.services import (
    SUPERSEDED_ATTEMPT,
    AttemptSuperseded,
    delivery_failure_record,
    delivery_package,
)
from licensing.services.deliveries import delivery_package_commit, delivery_package_upload
from tests.catalog.factories import TEST_ACTOR
from tests.licensing.test_packaging import delivery_actions, pending, sku  # noqa: F401

pytestmark = pytest.mark.django_db


def killed_attempt(delivery: Delivery) -> Any:
    """One attempt that stored its package and died before committing."""
    stored = delivery_package_upload(delivery_id=delivery.pk, actor=TEST_ACTOR)
    assert not isinstance(stored, str), stored
    return stored


def test_a_delivery_whose_workers_keep_dying_is_suspended_at_the_limit(
    pending: Delivery,  # noqa: F811
    settings: Any,
) -> None:
    settings.DELIVERY_MAX_ATTEMPTS = 3
    settings.DELIVERY_STALE_SECONDS = 0  # every heartbeat is stale at once: the worker died
    for _ in range(3):
        killed_attempt(pending)

    # The sweep sends it again: no fourth attempt, the delivery is suspended.
    assert delivery_package(delivery_id=pending.pk, actor=TEST_ACTOR) == "suspended"

    pending.refresh_from_db()
    assert (pending.status, pending.attempts) == ("suspended", 3)
    assert "3 attempts made" in pending.last_error
    event = AuditEvent.objects.get(action="delivery.suspended", subject_id=str(pending.pk))
    assert (event.data["attempts"], event.data["permanent"]) == (3, False)
    assert not Proof.objects.exists()
    # Suspended, it is not tried again.
    assert delivery_package(delivery_id=pending.pk, actor=TEST_ACTOR) == "suspended"
    assert delivery_actions(pending).count("delivery.suspended") == 1


def test_a_takeover_is_logged_with_the_stale_heartbeat(
    pending: Delivery,  # noqa: F811
    settings: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    killed_attempt(pending)
    stale = Delivery.objects.get(pk=pending.pk).heartbeat_at
    settings.DELIVERY_STALE_SECONDS = 0

    with caplog.at_level(logging.WARNING, logger="licensing.services.deliveries"):
        assert delivery_package(delivery_id=pending.pk, actor=TEST_ACTOR) == "ready"

    [record] = [r for r in caplog.records if "taken over" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert str(pending.pk) in record.getMessage()
    assert "attempt 1 " in record.getMessage()
    assert stale.isoformat() in record.getMessage()


def test_an_attempt_taken_over_cannot_finish_the_delivery(
    pending: Delivery,  # noqa: F811
    settings: Any,
) -> None:
    settings.DELIVERY_STALE_SECONDS = 0
    slow = killed_attempt(pending)  # stalled past the stale time, not dead
    live = killed_attempt(pending)  # took it over

    with pytest.raises(AttemptSuperseded):
        delivery_package_commit(slow, actor=TEST_ACTOR)
    pending.refresh_from_db()
    assert (pending.status, pending.attempts) == ("pending", 2)
    assert not Proof.objects.exists()

    assert delivery_package_commit(live, actor=TEST_ACTOR) == "ready"
    assert Proof.objects.count() == 1


@pytest.mark.parametrize("permanent", [True, False], ids=["permanent", "transient"])
def test_an_attempt_taken_over_records_no_failure_over_the_live_one(
    pending: Delivery,  # noqa: F811
    settings: Any,
    permanent: bool,
) -> None:
    settings.DELIVERY_MAX_ATTEMPTS = 2
    settings.DELIVERY_STALE_SECONDS = 0
    killed_attempt(pending)
    live = killed_attempt(pending)

    # Attempt 1's worker was alive after all, and failed.
    assert (
        delivery_failure_record(
            delivery_id=pending.pk,
            attempt=1,
            error="OSError: disk full",
            permanent=permanent,
            actor=TEST_ACTOR,
        )
        == SUPERSEDED_ATTEMPT
    )
    pending.refresh_from_db()
    assert (pending.status, pending.last_error) == ("pending", "")
    assert "delivery.suspended" not in delivery_actions(pending)
    # The live attempt finishes the delivery.
    assert delivery_package_commit(live, actor=TEST_ACTOR) == DeliveryStatus.READY
