import io
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction

from audit.chain import GENESIS_HASH, record_hash, record_of
from audit.checkpoints import checkpoint_create
from audit.models import AppendOnly, AuditEvent, ChainHead, Checkpoint
from audit.sealer import seal_all
from audit.services import audit_append
from audit.signing_keys import signing_key_revoke, signing_key_rotate
from audit.tasks import checkpoint_create as checkpoint_task
from audit.verify import chain_verify
from marketplace.actors import Actor
from marketplace.models import SigningKeyPurpose
from tests.support import pg
from tests.support.audit import owner_tamper, sealed_events

pytestmark = pytest.mark.django_db


def append(action: str = "sku.activated", subject_id: int = 1, **data: object) -> AuditEvent:
    with transaction.atomic():
        return audit_append(
            actor=Actor.system("test"), action=action, subject=("sku", subject_id), data=data
        )


def sealed(*events: AuditEvent) -> None:
    """Seals what is pending and reloads `events` with their sequence and hashes."""
    seal_all()
    for event in events:
        event.refresh_from_db()


def test_events_chain_from_the_genesis_hash(buyer) -> None:
    first = append(slug="a")
    with transaction.atomic():
        second = audit_append(
            actor=Actor.of_user(buyer), action="order.paid", subject=("order", "o-1")
        )
    sealed(first, second)

    assert (first.sequence, second.sequence) == (1, 2)
    assert first.prev_hash == GENESIS_HASH
    assert second.prev_hash == first.hash
    assert (second.actor_type, second.actor_id) == ("buyer", str(buyer.uuid))
    stored = AuditEvent.objects.get(sequence=1)
    expected = record_of(
        sequence=1,
        occurred_at=stored.occurred_at,
        actor_type="system",
        actor_id="test",
        action="sku.activated",
        subject_type="sku",
        subject_id="1",
        data={"slug": "a"},
        prev_hash=GENESIS_HASH,
    )
    assert stored.hash == record_hash(expected)
    head = ChainHead.objects.get()
    assert (head.sequence, head.hash) == (2, second.hash)
    assert second.occurred_at >= first.occurred_at


def test_a_staff_actor_is_the_staff_users_uuid(content_ops) -> None:
    assert Actor.of_user(content_ops) == Actor("staff", str(content_ops.uuid))


def test_a_rollback_leaves_no_event_and_the_next_append_fills_the_sequence() -> None:
    append()

    def change_that_fails() -> None:
        with transaction.atomic():
            audit_append(actor=Actor.system("test"), action="sku.suspended", subject=("sku", 1))
            raise RuntimeError("change failed")

    with pytest.raises(RuntimeError, match="change failed"):
        change_that_fails()

    assert list(sealed_events().values_list("sequence", flat=True)) == [1]
    second = append()
    sealed(second)
    assert second.sequence == 2
    assert chain_verify().ok


@pytest.mark.django_db(transaction=True)
def test_appending_outside_a_transaction_is_refused() -> None:
    with pytest.raises(RuntimeError, match="inside the transaction"):
        audit_append(actor=Actor.system("test"), action="x.y", subject=("x", 1))
    assert not AuditEvent.objects.exists()


def test_data_with_a_float_is_refused_and_nothing_is_written() -> None:
    with pytest.raises(ValueError, match="floating-point"), transaction.atomic():
        audit_append(
            actor=Actor.system("test"), action="x.y", subject=("x", 1), data={"price": 4.99}
        )
    assert not AuditEvent.objects.exists()
    assert not ChainHead.objects.filter(sequence__gt=0).exists()


def test_the_model_refuses_update_and_delete() -> None:
    event = append()
    event.action = "sku.retired"
    with pytest.raises(AppendOnly):
        event.save()
    with pytest.raises(AppendOnly):
        event.delete()
    with pytest.raises(AppendOnly):
        AuditEvent.objects.filter(sequence=1).update(action="sku.retired")
    with pytest.raises(AppendOnly):
        AuditEvent.objects.all().delete()
    assert AuditEvent.objects.get().action == "sku.activated"


@pytest.mark.skipif("connection.vendor != 'postgresql'")
@pytest.mark.parametrize(
    ("sql", "refusal"),
    [
        # The platform's role may update only the columns sealing sets, and delete nothing:
        # its privileges refuse before any trigger runs.
        ("UPDATE audit_event SET action = 'sku.retired' WHERE sequence = 1", "permission denied"),
        ("DELETE FROM audit_event WHERE sequence = 1", "permission denied"),
        # The suite's role may truncate (tests/conftest.py, for the flush only): the trigger
        # refuses it.
        ("TRUNCATE audit_event", "append-only"),
        ("UPDATE audit_checkpoint SET hash = 'x'", "permission denied"),
        ("DELETE FROM audit_checkpoint", "permission denied"),
        ("TRUNCATE audit_export", "append-only"),
    ],
)
def test_postgresql_refuses_raw_sql_that_changes_the_record(sql: str, refusal: str) -> None:
    append()
    checkpoint_create()
    if not pg.OWNER:  # the suite runs as the owner: only the triggers refuse
        refusal = "append-only"
    with pytest.raises(DatabaseError, match=refusal), transaction.atomic():
        connection.cursor().execute(sql)
    assert AuditEvent.objects.get(sequence=1).action == "sku.activated"
    assert Checkpoint.objects.count() == 1


def test_verify_passes_on_an_untouched_chain_with_checkpoints() -> None:
    for index in range(5):
        append(subject_id=index)
    first = checkpoint_create()  # creates the audit key first, which is event 6
    assert checkpoint_create() is None  # nothing new to sign
    append()
    second = checkpoint_create()
    assert first is not None
    assert second is not None
    assert (first.sequence, second.sequence) == (6, 7)
    assert AuditEvent.objects.get(sequence=6).action == "signing_key.created"

    report = chain_verify()
    assert report.ok, report.summary()
    assert (report.events, report.checkpoints) == (7, 2)


# The tampering tests play the tables' owner, whose connection sees only committed rows.
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("sql", "code", "sequence"),
    [
        ("UPDATE audit_event SET data = %s WHERE sequence = 3", "hash_mismatch", 3),
        ("DELETE FROM audit_event WHERE sequence = 3", "gap", 3),
        # Event 6 is the audit key's creation, which the checkpoint signs.
        ("DELETE FROM audit_event WHERE sequence = 6", "truncated", 6),
    ],
)
def test_verify_names_the_first_bad_event_after_raw_tampering(
    sql: str, code: str, sequence: int
) -> None:
    for index in range(5):
        append(subject_id=index)
    checkpoint_create()
    owner_tamper(sql, ['{"price": 1}'] if "%s" in sql else [])

    report = chain_verify()
    assert report.failure is not None
    assert (report.failure.code, report.failure.sequence) == (code, sequence)
    with pytest.raises(CommandError, match=f"sequence {sequence}: .*\\[{code}\\]"):
        call_command("audit_verify")


@pytest.mark.django_db(transaction=True)
def test_a_rewritten_history_is_caught_by_the_checkpoint() -> None:
    """Whoever rewrites an event and recomputes every later hash still cannot re-sign the
    checkpoint: the event it signed no longer has the signed hash."""
    for index in range(3):
        append(subject_id=index)
    checkpoint_create()
    rows = list(AuditEvent.objects.order_by("sequence"))
    prev = GENESIS_HASH
    rewritten = []
    for row in rows:
        record = record_of(
            sequence=row.sequence,
            occurred_at=row.occurred_at,
            actor_type=row.actor_type,
            actor_id=row.actor_id,
            action="sku.retired" if row.sequence == 2 else row.action,
            subject_type=row.subject_type,
            subject_id=row.subject_id,
            data=row.data,
            prev_hash=prev,
        )
        prev = record_hash(record)
        rewritten.append((record["action"], record["prev_hash"], prev, row.sequence))
    for action, prev_hash, new_hash, sequence in rewritten:
        owner_tamper(
            "UPDATE audit_event SET action = %s, prev_hash = %s, hash = %s WHERE sequence = %s",
            [action, prev_hash, new_hash, sequence],
        )

    report = chain_verify()
    assert report.failure is not None
    # The checkpoint signed event 4 (the audit key's creation came after the three).
    assert (report.failure.code, report.failure.sequence) == ("hash_mismatch", 4)
    assert "checkpoint" in report.failure.reason


def test_checkpoints_signed_by_a_retired_key_verify_and_by_a_revoked_key_do_not() -> None:
    append()
    first = checkpoint_create()
    assert first is not None
    new_key, retired = signing_key_rotate(purpose=SigningKeyPurpose.AUDIT)
    assert retired is not None
    assert retired.kid == first.key_id
    append()
    second = checkpoint_create()
    assert second is not None
    assert second.key_id == new_key.kid
    assert chain_verify().ok

    signing_key_revoke(kid=first.key_id, reason="key leaked")
    report = chain_verify()
    assert report.failure is not None
    assert (report.failure.code, report.failure.sequence) == ("unknown_key", first.sequence)
    assert [e.action for e in AuditEvent.objects.filter(subject_type="signing_key")] == [
        "signing_key.revoked",
        "signing_key.created",
        "signing_key.retired",
        "signing_key.created",
    ]


@pytest.mark.django_db(transaction=True)
def test_a_checkpoint_whose_signed_fields_were_changed_is_refused() -> None:
    append()
    checkpoint = checkpoint_create()
    assert checkpoint is not None
    owner_tamper(
        "UPDATE audit_checkpoint SET signed_at = %s",
        [checkpoint.signed_at + timedelta(hours=1)],
        table="audit_checkpoint",
    )

    report = chain_verify()
    assert report.failure is not None
    assert (report.failure.code, report.failure.sequence) == ("bad_signature", 2)


def test_the_checkpoint_command_signs_the_head_once() -> None:
    append()
    out = io.StringIO()
    call_command("audit_checkpoint", stdout=out)
    checkpoint = Checkpoint.objects.get()
    assert out.getvalue() == (f"Signed event 2 ({checkpoint.hash}) with {checkpoint.key_id}.\n")
    out = io.StringIO()
    call_command("audit_checkpoint", stdout=out)
    assert "Nothing new to sign" in out.getvalue()
    assert Checkpoint.objects.count() == 1


def test_the_beat_task_signs_the_head_and_is_harmless_twice() -> None:
    append()
    assert checkpoint_task.apply().get() == 2  # event 2 is the audit key's creation
    assert checkpoint_task.apply().get() is None
    assert Checkpoint.objects.count() == 1


def test_beat_schedules_checkpoints_exports_and_the_kernel_push() -> None:
    from config.celery import app

    tasks = {entry["task"] for entry in app.conf.beat_schedule.values()}
    assert {
        "audit.tasks.checkpoint_create",
        "audit.tasks.audit_exports_catch_up",
        "audit.tasks.kernel_push",
    } <= tasks


@pytest.mark.django_db(transaction=True)
def test_an_event_written_past_the_head_is_named() -> None:
    """Someone with write access inserts an event and leaves the head alone, or moves the head
    back to an earlier event: the table holds an event the log never appended."""
    for index in range(6):
        append(subject_id=index)
    fifth = sealed_events().get(sequence=5)
    owner_tamper(
        "UPDATE audit_chain_head SET sequence = %s, hash = %s",
        [fifth.sequence, fifth.hash],
        table="audit_chain_head",
    )

    report = chain_verify()

    assert report.failure is not None
    assert (report.failure.code, report.failure.sequence) == ("beyond_head", 6)
    with pytest.raises(CommandError, match=r"sequence 6: .*\[beyond_head\]"):
        call_command("audit_verify")
