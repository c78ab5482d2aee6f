"""Reading the audit log in tests. On PostgreSQL an append leaves its event unsealed (no
sequence or hash) until the sealer runs, so whatever reads sequences, hashes or the chain seals
first; on SQLite appends seal inline and `seal_all` does nothing."""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from django.db import connection

from audit.models import AuditEvent, AuditEventQuerySet
from audit.sealer import SEAL_LOCK, seal_all, seals_later
from tests.support import pg


def sealed_events(**filters: Any) -> AuditEventQuerySet:
    """Seals what is pending; the events matching `filters`, in chain order."""
    seal_all()
    return AuditEvent.objects.filter(**filters).order_by("sequence")


def owner_tamper(sql: str, params: list[Any] | None = None, *, table: str = "audit_event") -> None:
    """What the tables' owner can do: switch the table's triggers off, edit, switch them on.

    On PostgreSQL this runs on the owner's own connection (the suite's role may not disable
    triggers), so it sees only committed rows: the test is `django_db(transaction=True)` and
    seals first. On SQLite, which has no roles and no triggers on these tables, it is a plain
    statement on the test's connection."""
    if connection.vendor != "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(sql, params or [])
        return
    # One transaction: the triggers are never seen off by another session (a worker's sealer
    # sealing then would leave the chain head behind); ALTER TABLE's lock makes it wait.
    with pg.pg_connect(owner=True) as owner, owner.transaction():
        owner.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
        owner.execute(sql, params or [])
        owner.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")


@contextmanager
def sealing_held() -> Iterator[None]:
    """Keeps every sealer (a worker's included) off the chain while the block runs: it holds
    the seal lock on a connection of its own, so events appended in the block stay unsealed
    until the owner has dated them (seal_dated) and the block has ended."""
    if not seals_later():
        yield
        return
    with pg.pg_connect() as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", [SEAL_LOCK])
        holder.commit()
        try:
            yield
        finally:
            holder.execute("SELECT pg_advisory_unlock(%s)", [SEAL_LOCK])
            holder.commit()


def redate_unsealed(events: Sequence[AuditEvent], moment: datetime) -> None:
    """As the tables' owner, dates the still-unsealed `events` at `moment` (PostgreSQL)."""
    if seals_later() and events:
        owner_tamper(
            "UPDATE audit_event SET occurred_at = %s WHERE id = ANY(%s) AND sequence IS NULL",
            [moment, [event.pk for event in events]],
        )


def seal_dated(events: Sequence[AuditEvent], moment: datetime) -> None:
    """Seals `events` dated `moment` (another day, say), and reloads them.

    On SQLite the appends, made under a patched `timezone.now`, dated and sealed them already.
    On PostgreSQL the insert trigger dates an event by the database's clock when the writer's
    is more than a minute off, so the tables' owner moves them, still unsealed, to `moment`
    first: the test is `django_db(transaction=True)`, for the owner's connection to see them."""
    if seals_later() and events:
        owner_tamper(
            "UPDATE audit_event SET occurred_at = %s WHERE id = ANY(%s) AND sequence IS NULL",
            [moment, [event.pk for event in events]],
        )
    seal_all()
    for event in events:
        event.refresh_from_db()
