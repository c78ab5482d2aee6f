"""Sealing on PostgreSQL (audit.sealer): writers insert unsealed events without waiting on one
another; one sealer gives the committed ones their place in the chain. Real processes, real
PostgreSQL, the platform's own database role."""

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from typing import Any

import pytest
from django.db import connection, transaction

from audit.models import AuditEvent, ChainHead
from audit.sealer import seal_all, seal_pending
from audit.services import audit_append
from audit.verify import chain_verify
from marketplace.actors import Actor
from tests.support.pg import backends_blocked_by, pg_connect
from tests.support.worker import BASE_DIR, _database_url

pytestmark = pytest.mark.postgres

WRITERS = 8
EVENTS_EACH = 40
ACTOR = Actor.service("sealing-test")


def _env(settings: Any) -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "MARKETPLACE_DATABASE_URL": _database_url(),
        "MARKETPLACE_TEST_DATA_DIR": str(settings.DATA_DIR),
        "MARKETPLACE_TEST_AUDIT_DIR": str(settings.AUDIT_EXPORT_DIR),
    }


def _manage(settings: Any, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "manage.py", *args],
        cwd=BASE_DIR,
        env=_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _append(index: int) -> AuditEvent:
    with transaction.atomic():
        return audit_append(
            actor=ACTOR, action="test.appended", subject=("writer", "t"), data={"index": index}
        )


@pytest.mark.django_db
def test_an_append_leaves_its_event_unsealed_and_the_sealer_seals_it() -> None:
    event = _append(0)
    assert (event.sequence, event.prev_hash, event.hash) == (None, None, None)

    batch = seal_pending()

    event.refresh_from_db()
    assert (batch.count, batch.last_sequence, event.sequence) == (1, 1, 1)
    assert ChainHead.objects.get().hash == event.hash
    assert chain_verify(witnesses=[]).ok


@pytest.mark.django_db
def test_sealing_never_dates_an_event_before_the_one_it_follows() -> None:
    first = _append(0)
    # The later insert carries an earlier time, as a writer with a slower clock would.
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO audit_event (occurred_at, actor_type, actor_id, action, subject_type, "
            "subject_id, data) VALUES (%s - interval '30 seconds', 'service', 'slow', "
            "'test.slow_clock', 'writer', 'slow', '{}') RETURNING id",
            [first.occurred_at],
        )
        [second_id] = cursor.fetchone()

    seal_all()

    first.refresh_from_db()
    second = AuditEvent.objects.get(id=second_id)
    assert (first.sequence, second.sequence) == (1, 2)
    assert second.occurred_at == first.occurred_at
    assert chain_verify(witnesses=[]).ok


@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_append_leaves_nothing_to_seal() -> None:
    def change_that_fails() -> None:
        with transaction.atomic():
            audit_append(actor=ACTOR, action="test.rolled_back", subject=("writer", "t"))
            raise RuntimeError("the change fails after its event was written")

    with pytest.raises(RuntimeError):
        change_that_fails()
    kept = _append(1)

    assert seal_all() == 1
    assert list(AuditEvent.objects.values_list("id", "sequence")) == [(kept.id, 1)]
    assert chain_verify(witnesses=[]).ok


@pytest.mark.django_db(transaction=True)
def test_an_event_still_in_flight_is_not_sealed_until_its_transaction_commits() -> None:
    writer = pg_connect()
    try:
        writer.execute(
            "INSERT INTO audit_event (occurred_at, actor_type, actor_id, action, subject_type, "
            "subject_id, data) VALUES (now(), 'service', 'w', 'test.open', 'writer', 'w', '{}')"
        )
        after = _append(2)  # committed, inserted after the open one

        assert seal_all() == 1
        assert AuditEvent.objects.get(id=after.id).sequence == 1
        writer.commit()
    finally:
        writer.close()

    assert seal_all() == 1
    assert list(AuditEvent.objects.order_by("sequence").values_list("action", flat=True)) == [
        "test.appended",
        "test.open",
    ]
    assert chain_verify(witnesses=[]).ok


@pytest.mark.django_db(transaction=True)
def test_eight_processes_appending_while_a_sealer_runs_end_in_one_gapless_chain(
    settings: Any,
) -> None:
    sealer = _manage(settings, "audit_seal", "--loop", "--interval", "0.01")
    start_at = time.time() + 3  # every process has loaded Django by then
    writers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.audit.appender",
                f"w{n}",
                str(EVENTS_EACH),
                str(start_at),
            ],
            cwd=BASE_DIR,
            env=_env(settings),
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(WRITERS)
    ]
    try:
        for writer in writers:
            _, errors = writer.communicate(timeout=120)
            assert writer.returncode == 0, errors
        sealed_meanwhile = AuditEvent.objects.sealed().count()
    finally:
        sealer.send_signal(signal.SIGTERM)
        sealer.communicate(timeout=30)

    seal_all()
    total = WRITERS * EVENTS_EACH
    assert sealed_meanwhile > 0, "the sealer sealed nothing while the writers ran"
    sequences = list(AuditEvent.objects.order_by("sequence").values_list("sequence", flat=True))
    assert sequences == list(range(1, total + 1))
    assert Counter(AuditEvent.objects.values_list("actor_id", flat=True)) == {
        f"w{n}": EVENTS_EACH for n in range(WRITERS)
    }
    # Each writer's own events keep their order within the chain.
    for n in range(WRITERS):
        indexes = [
            event.data["index"]
            for event in AuditEvent.objects.filter(actor_id=f"w{n}").order_by("sequence")
        ]
        assert indexes == list(range(EVENTS_EACH))
    assert ChainHead.objects.get().sequence == total
    report = chain_verify(witnesses=[])
    assert report.ok, report.summary()


@pytest.mark.django_db(transaction=True)
def test_a_sealer_killed_mid_batch_loses_and_duplicates_nothing(settings: Any) -> None:
    for index in range(50):
        _append(index)
    _append(50)
    assert seal_pending(limit=1).count == 1  # the head is past genesis when the kill comes

    # The owner holds the head row: the sealer's statement seals its batch, then waits in the
    # seal trigger for the head, inside its transaction. There it is killed.
    owner = pg_connect(owner=True)
    owner.autocommit = False
    try:
        owner.execute("SELECT 1 FROM audit_chain_head WHERE id = 1 FOR UPDATE")
        owner_pid = owner.info.backend_pid
        sealer = _manage(settings, "audit_seal")
        deadline = time.monotonic() + 60
        while not backends_blocked_by(owner_pid):
            assert sealer.poll() is None, sealer.communicate()
            assert time.monotonic() < deadline, "the sealer never reached the head"
            time.sleep(0.05)
        sealer.send_signal(signal.SIGKILL)
        sealer.wait(timeout=30)
    finally:
        owner.rollback()
        owner.close()
    deadline = time.monotonic() + 30
    while AuditEvent.objects.unsealed().count() != 50 and time.monotonic() < deadline:
        time.sleep(0.05)  # PostgreSQL notices the dead backend and rolls its batch back

    assert AuditEvent.objects.sealed().count() == 1
    assert seal_all() == 50
    sequences = list(AuditEvent.objects.order_by("sequence").values_list("sequence", flat=True))
    assert sequences == list(range(1, 52))
    report = chain_verify(witnesses=[])
    assert report.ok, report.summary()


@pytest.mark.django_db
def test_a_second_sealer_leaves_the_batch_to_the_one_holding_the_lock() -> None:
    _append(0)
    holder = pg_connect()
    try:
        holder.execute("SELECT pg_advisory_xact_lock(%s)", [0x61756469745F7365])

        assert seal_pending().busy is True
        assert AuditEvent.objects.sealed().count() == 0
    finally:
        holder.rollback()
        holder.close()
    assert seal_pending().count == 1


@pytest.mark.django_db(transaction=True)
def test_two_checkpoints_signed_at_once_leave_one_chained_checkpoint() -> None:
    from audit.checkpoints import checkpoint_create
    from audit.models import Checkpoint
    from tests.support.pg import in_thread

    _append(0)
    seal_all()
    checkpoint_create()  # the audit key exists and the first link is made
    _append(1)
    seal_all()
    runs = [in_thread(checkpoint_create) for _ in range(3)]
    for thread, _ in runs:
        thread.join(timeout=60)

    outcomes = [outcome for _, outcome in runs]
    assert not [o for [o] in outcomes if isinstance(o, Exception)], outcomes
    assert len([o for [o] in outcomes if o is not None]) == 1
    assert Checkpoint.objects.count() == 2
    assert chain_verify(witnesses=[]).ok
