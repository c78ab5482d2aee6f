"""What the audit log holds against write access to its database (docs/audit.md, "Who can
change what"). The platform's own role, which the suite runs as, is refused every change but
sealing; the tables' owner, who can disable the triggers, is caught by verification against
the outside witnesses: the checkpoint copies, the newest export digest, the Kernel's copy."""

import hashlib
import json
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from audit.chain import GENESIS_HASH, STORED_COLUMNS, stored_record
from audit.checkpoints import checkpoint_create
from audit.exports import audit_export_day
from audit.fanout import kernel_push
from audit.models import AuditEvent, ChainHead, Checkpoint
from audit.sealer import seal_all
from audit.services import audit_append
from audit.verify import chain_verify
from marketplace.actors import Actor
from tests.support.kernel import KernelServer
from tests.support.pg import pg_connect

pytestmark = pytest.mark.postgres

ACTOR = Actor.service("tampering-test")


def append(count: int) -> None:
    for index in range(count):
        with transaction.atomic():
            audit_append(
                actor=ACTOR, action="test.appended", subject=("t", index), data={"i": index}
            )
    seal_all()


def refused(sql: str, params: list[Any] | None = None) -> str:
    with pytest.raises(DatabaseError) as caught, transaction.atomic(), connection.cursor() as c:
        c.execute(sql, params)
    return str(caught.value)


# --- The platform's role -----------------------------------------------------------------------


@pytest.mark.django_db
def test_the_platform_role_cannot_change_remove_or_unguard_sealed_events() -> None:
    append(3)
    head = ChainHead.objects.get()

    assert "permission denied" in refused("UPDATE audit_event SET data = '{}' WHERE sequence = 1")
    assert "cannot change" in refused(
        "UPDATE audit_event SET hash = %s WHERE sequence = 2", ["f" * 64]
    )
    assert "permission denied" in refused("DELETE FROM audit_event WHERE sequence = 3")
    assert "permission denied" in refused("UPDATE audit_chain_head SET sequence = 2")
    assert "must be owner" in refused("ALTER TABLE audit_event DISABLE TRIGGER USER")
    assert "must be owner" in refused("DROP TRIGGER audit_event_seal ON audit_event")
    assert ChainHead.objects.get().hash == head.hash
    assert chain_verify(witnesses=[]).ok


@pytest.mark.django_db
def test_the_platform_role_cannot_append_a_forged_sealed_event_or_move_the_head() -> None:
    append(2)
    head = ChainHead.objects.get()
    record_row = (3, timezone.now(), "service", "forger", "x", "t", "9", {}, head.hash, None)
    forged_hash = hashlib.sha256(stored_record(record_row)[3]).hexdigest()

    message = refused(
        "INSERT INTO audit_event (sequence, occurred_at, actor_type, actor_id, action, "
        "subject_type, subject_id, data, prev_hash, hash) VALUES (3, now(), 'service', "
        "'forger', 'x', 't', '9', '{}', %s, %s)",
        [head.hash, forged_hash],
    )

    assert "inserted unsealed" in message
    assert "permission denied" in refused(
        "UPDATE audit_chain_head SET sequence = 3, hash = %s", [forged_hash]
    )


@pytest.mark.django_db
def test_sealing_out_of_turn_is_refused_by_the_seal_trigger() -> None:
    append(1)
    head = ChainHead.objects.get()
    with transaction.atomic():
        audit_append(actor=ACTOR, action="test.pending", subject=("t", "p"))
    pending = AuditEvent.objects.unsealed().get()

    skipped = refused(
        "UPDATE audit_event SET sequence = 3, prev_hash = %s, hash = %s WHERE id = %s",
        [head.hash, "a" * 64, pending.id],
    )
    unlinked = refused(
        "UPDATE audit_event SET sequence = 2, prev_hash = %s, hash = %s WHERE id = %s",
        [GENESIS_HASH, "a" * 64, pending.id],
    )
    rewritten = refused(
        "UPDATE audit_event SET sequence = 2, prev_hash = %s, hash = %s, action = 'x' "
        "WHERE id = %s",
        [head.hash, "a" * 64, pending.id],
    )

    assert "next links of the chain" in skipped
    assert "does not link" in unlinked
    assert "permission denied" in rewritten
    assert seal_all() == 1
    assert chain_verify(witnesses=[]).ok


@pytest.mark.django_db
def test_a_checkpoint_off_the_checkpoints_chain_is_refused() -> None:
    append(2)
    checkpoint_create()
    append(1)

    head = ChainHead.objects.get()
    message = refused(
        "INSERT INTO audit_checkpoint (sequence, hash, previous, signed_at, key_id, signature) "
        "VALUES (%s, %s, %s, now(), 'k', 's')",
        [head.sequence, head.hash, "b" * 64],
    )

    assert "follows the last one" in message


# --- The tables' owner -------------------------------------------------------------------------


def _owner() -> psycopg.Connection:
    owner = pg_connect(owner=True)
    for table in ("audit_event", "audit_checkpoint", "audit_chain_head"):
        owner.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
    return owner


def _restore_triggers(owner: psycopg.Connection) -> None:
    for table in ("audit_event", "audit_checkpoint", "audit_chain_head"):
        owner.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")
    owner.close()


def owner_rewrite_from(sequence: int, data: dict[str, Any]) -> None:
    """As the owner: changes event `sequence` and re-hashes the chain from there to the head,
    so the table alone is consistent again."""
    owner = _owner()
    try:
        columns = ", ".join(STORED_COLUMNS)
        rows = owner.execute(
            f"SELECT {columns} FROM audit_event WHERE sequence >= %s ORDER BY sequence",  # noqa: S608
            [sequence],
        ).fetchall()
        prev = rows[0][8]
        for row in rows:
            row = list(row)
            if row[0] == sequence:
                row[7] = data
            row[8] = prev
            body = stored_record(tuple(row))[3]
            prev = hashlib.sha256(body).hexdigest()
            owner.execute(
                "UPDATE audit_event SET data = %s, prev_hash = %s, hash = %s WHERE sequence = %s",
                [json.dumps(row[7]), row[8], prev, row[0]],
            )
        owner.execute("UPDATE audit_chain_head SET hash = %s", [prev])
    finally:
        _restore_triggers(owner)


def owner_delete_from(sequence: int, *, checkpoints: bool) -> None:
    owner = _owner()
    try:
        owner.execute("DELETE FROM audit_event WHERE sequence >= %s", [sequence])
        if checkpoints:
            owner.execute("DELETE FROM audit_checkpoint WHERE sequence >= %s", [sequence])
        last = owner.execute(
            "SELECT sequence, hash FROM audit_event WHERE sequence IS NOT NULL "
            "ORDER BY sequence DESC LIMIT 1"
        ).fetchone()
        owner.execute("UPDATE audit_chain_head SET sequence = %s, hash = %s", list(last))
    finally:
        _restore_triggers(owner)


def yesterday_events(count: int) -> Any:
    """Unsealed events of yesterday noon, as a sealer that was down since would find them (the
    insert trigger dates a new event now: the owner sets it aside for this), sealed."""
    yesterday = timezone.now() - timedelta(days=1)
    owner = pg_connect(owner=True)
    try:
        owner.execute("ALTER TABLE audit_event DISABLE TRIGGER audit_event_insert")
        for index in range(count):
            owner.execute(
                "INSERT INTO audit_event (occurred_at, actor_type, actor_id, action, "
                "subject_type, subject_id, data) VALUES (%s, 'service', 'w', 'test.old', 't', "
                "%s, '{}')",
                [yesterday.replace(hour=12), str(index)],
            )
    finally:
        owner.execute("ALTER TABLE audit_event ENABLE TRIGGER audit_event_insert")
        owner.close()
    seal_all()
    return yesterday


def failure_code() -> str:
    report = chain_verify()
    assert report.failure is not None, report.summary()
    return report.failure.code


@pytest.mark.django_db(transaction=True)
def test_a_tail_deleted_with_the_checkpoints_that_signed_it_is_found_by_their_copies() -> None:
    append(4)
    checkpoint_create()
    append(3)
    checkpoint_create()
    assert chain_verify().ok

    owner_delete_from(5, checkpoints=True)

    assert chain_verify(witnesses=[]).ok  # the database alone is consistent again
    assert failure_code() == "witness_truncated"


@pytest.mark.django_db(transaction=True)
def test_deleting_checkpoints_alone_is_noticed() -> None:
    for _ in range(3):
        append(2)
        checkpoint_create()
    signed = list(Checkpoint.objects.order_by("sequence").values_list("sequence", flat=True))
    owner = _owner()
    try:
        owner.execute("DELETE FROM audit_checkpoint WHERE sequence = %s", [signed[1]])
    finally:
        _restore_triggers(owner)
    assert failure_code() == "checkpoint_chain"

    owner = _owner()
    try:
        owner.execute("DELETE FROM audit_checkpoint WHERE sequence >= %s", [signed[1]])
    finally:
        _restore_triggers(owner)
    assert chain_verify(witnesses=[]).ok
    assert failure_code() == "checkpoint_missing"


@pytest.mark.django_db(transaction=True)
def test_a_tail_rewritten_after_the_kernel_saw_it_is_found_by_the_kernels_copy(
    kernel: KernelServer,
) -> None:
    append(3)
    checkpoint_create()
    append(3)
    kernel_push()
    assert chain_verify().ok

    owner_rewrite_from(5, {"forged": True})  # after the last checkpoint, before the Kernel's

    assert chain_verify(witnesses=[]).ok
    assert failure_code() == "witness_mismatch"


@pytest.mark.django_db(transaction=True)
def test_events_rewritten_and_re_signed_with_the_audit_key_differ_from_the_copies() -> None:
    """The owner holding the master key too signs new checkpoints over a rewritten chain; the
    checkpoint copy in the bucket still holds the hash it signed first."""
    append(4)
    checkpoint_create()

    owner_rewrite_from(2, {"forged": True})
    owner = _owner()
    try:
        owner.execute("DELETE FROM audit_checkpoint")
    finally:
        _restore_triggers(owner)
    checkpoint_create()  # signs the rewritten head with the real key

    assert chain_verify(witnesses=[]).ok
    assert failure_code() == "witness_mismatch"


@pytest.mark.django_db(transaction=True)
def test_a_tail_deleted_after_an_export_is_found_by_its_digest(settings: Any) -> None:
    yesterday = yesterday_events(3)
    seal_all()
    audit_export_day(day=yesterday.date())
    assert chain_verify().ok

    owner_delete_from(2, checkpoints=True)

    assert chain_verify(witnesses=[]).ok
    assert failure_code() == "witness_truncated"


@pytest.mark.django_db(transaction=True)
def test_the_window_no_witness_has_seen_is_reported() -> None:
    append(3)
    checkpoint_create()
    append(2)
    with transaction.atomic():
        audit_append(actor=ACTOR, action="test.pending", subject=("t", "p"))

    report = chain_verify()

    signed = Checkpoint.objects.get().sequence
    assert report.ok, report.summary()
    assert (report.witnessed_sequence, report.unwitnessed_events) == (signed, 3)
    assert report.unwitnessed_since is not None
    assert f"3 event(s) past #{signed} are held by no witness yet" in report.window()


# --- Getting round the triggers ----------------------------------------------------------------


@pytest.mark.django_db
def test_temporary_tables_cannot_stand_in_for_the_head_and_the_functions_cannot_be_called() -> None:
    append(2)
    head = ChainHead.objects.get()
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TEMPORARY TABLE audit_chain_head (id int, sequence bigint, hash text, "
            "occurred_at timestamptz)"
        )
        cursor.execute("INSERT INTO audit_chain_head VALUES (1, 40, %s, now())", ["e" * 64])
        cursor.execute("CREATE TEMPORARY TABLE decoy (n int)")
    with transaction.atomic():
        audit_append(actor=ACTOR, action="test.after_decoy", subject=("t", "d"))

    assert seal_all() == 1
    with connection.cursor() as cursor:  # this session's own "audit_chain_head" is the decoy
        cursor.execute("SELECT sequence FROM public.audit_chain_head")
        assert cursor.fetchone() == (head.sequence + 1,)
    assert "permission denied for function" in refused(
        "CREATE TRIGGER fake AFTER UPDATE ON decoy REFERENCING NEW TABLE AS sealed "
        "FOR EACH STATEMENT EXECUTE FUNCTION audit_event_advance_head()"
    )


@pytest.mark.django_db
def test_an_event_dated_far_from_the_database_clock_is_dated_by_it() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO audit_event (occurred_at, actor_type, actor_id, action, subject_type, "
            "subject_id, data) VALUES (now() + interval '4 weeks', 'service', 'w', "
            "'test.forward', 't', '1', '{}') RETURNING occurred_at, clock_timestamp()"
        )
        stored, clock = cursor.fetchone()

    assert abs((stored - clock).total_seconds()) < 5


@pytest.mark.django_db
def test_a_seal_that_moves_the_time_is_refused() -> None:
    append(1)
    head = ChainHead.objects.get()
    with transaction.atomic():
        audit_append(actor=ACTOR, action="test.pending", subject=("t", "p"))
    pending = AuditEvent.objects.unsealed().get()

    message = refused(
        "UPDATE audit_event SET sequence = 2, prev_hash = %s, hash = %s, "
        "occurred_at = occurred_at + interval '1 day' WHERE id = %s",
        [head.hash, "a" * 64, pending.id],
    )

    assert "dated as sealing dates it" in message


@pytest.mark.django_db
def test_data_that_could_not_be_sealed_is_refused_at_insert() -> None:
    deep: Any = 1
    for _ in range(100):
        deep = [deep]

    with pytest.raises(DatabaseError, match="limited to"), transaction.atomic():
        audit_append(actor=ACTOR, action="test.deep", subject=("t", "d"), data={"v": deep})
    assert "limited to" in refused(
        "INSERT INTO audit_event (occurred_at, actor_type, actor_id, action, subject_type, "
        "subject_id, data) VALUES (now(), 'service', 'w', 'test.huge', 't', '1', %s::jsonb)",
        ['{"n": ' + "9" * 5000 + "}"],
    )


@pytest.mark.django_db
def test_a_checkpoint_of_an_event_not_in_the_chain_is_refused() -> None:
    append(2)

    message = refused(
        "INSERT INTO audit_checkpoint (sequence, hash, previous, signed_at, key_id, signature) "
        "VALUES (1000000000000, %s, %s, now(), 'k', 'x')",
        ["c" * 64, GENESIS_HASH],
    )

    assert "signs a sealed event" in message


@pytest.mark.django_db(transaction=True)
def test_a_checkpoint_past_the_end_of_the_chain_fails_verification() -> None:
    append(2)
    owner = _owner()
    try:
        owner.execute(
            "INSERT INTO audit_checkpoint (sequence, hash, previous, signed_at, key_id, "
            "signature) VALUES (1000000000000, %s, %s, now(), 'k', 'x')",
            ["c" * 64, GENESIS_HASH],
        )
    finally:
        _restore_triggers(owner)

    report = chain_verify(witnesses=[])
    assert report.failure is not None
    assert report.failure.code == "truncated"


def _copies(settings: Any) -> Any:
    return settings.AUDIT_EXPORT_DIR / "checkpoints"


@pytest.mark.django_db(transaction=True)
def test_a_copy_under_a_newer_key_cannot_hide_the_newest_checkpoint(settings: Any) -> None:
    append(3)
    checkpoint_create()
    append(2)
    checkpoint_create()
    owner_delete_from(5, checkpoints=True)
    assert failure_code() == "witness_truncated"
    older = sorted(_copies(settings).iterdir())[-1]  # the first checkpoint's copy

    (_copies(settings) / "00000000000000000000.json").write_bytes(older.read_bytes())

    assert failure_code() == "witness_invalid"


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[1]", b'{"sequence": 1e400}', b'{"sequence": 3, "signed_at": "yesterday"}'],
)
@pytest.mark.django_db(transaction=True)
def test_hostile_content_in_the_bucket_fails_verification_without_crashing(
    settings: Any, body: bytes
) -> None:
    append(2)
    checkpoint_create()
    (_copies(settings) / "00000000000000000000.json").write_bytes(body)

    assert failure_code() == "witness_invalid"


@pytest.mark.django_db(transaction=True)
def test_an_export_digest_not_signed_by_the_audit_key_fails_verification(settings: Any) -> None:
    yesterday = yesterday_events(2)
    audit_export_day(day=yesterday.date())
    assert chain_verify().ok
    [digest_path] = list(settings.AUDIT_EXPORT_DIR.glob("*/*/*/*.digest.json"))
    digest = json.loads(digest_path.read_bytes())
    digest["event_count"] += 1  # what the signature covers no longer matches it
    digest_path.chmod(0o644)
    digest_path.write_text(json.dumps(digest))

    assert failure_code() == "bad_signature"
