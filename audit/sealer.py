"""Sealing: giving committed audit events their place in the chain (PostgreSQL).

An append inserts its event unsealed, inside the transaction of the change it records, and
takes no lock. The sealer then reads the unsealed events it can see and seals them, in the order
they were inserted (`id`): the next sequence numbers, each event's prev_hash and hash, and an
`occurred_at` never earlier than the event before it. It sees exactly the events whose
transactions have committed, by PostgreSQL's own snapshot: a row of a transaction still in
flight is invisible to it, one rolled back never becomes visible, so no clock is trusted and no
guess is made about what may still commit. An event committed later is sealed by a later batch.

One sealer at a time: each batch runs in one transaction under a transaction-level advisory
lock (SEAL_LOCK); a second sealer finds it taken and leaves the batch to the holder. The batch
is one UPDATE of the events; the seal trigger (migration 0004) checks that it continues the
chain from the head and moves the head, in the same statement. A sealer killed mid-batch rolls
back with its transaction: nothing is sealed twice or lost, and the next batch starts from the
head as it was.

Waking. After each commit that appended events, `seal_soon` enqueues the seal task unless one
is due (the cache key SCHEDULED_KEY, taken with `cache.add`; the task removes it before it reads,
so no wake-up is lost). Beat runs the task every few seconds as the safety net, and
`manage.py audit_seal --loop` is a standing sealer for platforms that want one outside Celery.
The Kernel fan-out, checkpoints and exports work on sealed events only; each seals what is
pending first, so none of them waits on a wake-up.
"""

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.core.cache import cache, caches
from django.core.cache.backends.locmem import LocMemCache
from django.db import connection, transaction
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerUnavailable
from prometheus_client import Counter, Gauge, Histogram

from audit.chain import GENESIS_HASH, stored_record

logger = logging.getLogger(__name__)

# pg_try_advisory_xact_lock key: "audit-seal" as a number, fixed so every process agrees.
SEAL_LOCK = 0x61756469745F7365
BATCH_SIZE = 2000
SCHEDULED_KEY = "audit:seal"
# How long a wake-up key outlives its task if the task is lost.
SCHEDULED_GRACE_SECONDS = 5.0
# How long one seal task goes on while batches come back full.
SEAL_BUDGET_SECONDS = 20.0

seal_lag = Histogram(
    "marketplace_audit_seal_lag_seconds",
    "Time from an audit event's insert to its seal.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60, 300),
)
sealed_total = Counter("marketplace_audit_sealed_total", "Audit events sealed.")
unsealed_events = Gauge(
    "marketplace_audit_unsealed_events",
    "Audit events committed but not yet sealed, as the last sealer run found them.",
    multiprocess_mode="livemostrecent",
)
unsealed_oldest = Gauge(
    "marketplace_audit_unsealed_oldest_seconds",
    "Age of the oldest committed audit event not yet sealed, as the last sealer run found it "
    "(0: none). It grows while sealing is stuck, whoever holds the seal lock.",
    multiprocess_mode="livemostrecent",
)
seal_failures = Counter(
    "marketplace_audit_seal_failures_total",
    "Seal batches that failed (rolled back, nothing sealed); each is retried.",
)

_COLUMNS = "id, occurred_at, actor_type, actor_id, action, subject_type, subject_id, data"

_SEAL = """
UPDATE {schema}.audit_event AS e
   SET sequence = v.sequence, prev_hash = v.prev_hash, hash = v.hash, occurred_at = v.occurred_at
  FROM unnest(%s::bigint[], %s::bigint[], %s::text[], %s::text[], %s::timestamptz[])
       AS v (id, sequence, prev_hash, hash, occurred_at)
 WHERE e.id = v.id AND e.sequence IS NULL
"""


class SealConflict(Exception):
    """The events changed under the batch (another sealer got there first); it rolled back."""


class UnsealableEvent(Exception):
    """An event whose record cannot be encoded; sealing stops before it, loudly. The insert
    trigger's limits on data (migration 0004) keep any append from producing one."""


@dataclass
class SealBatch:
    count: int = 0
    last_sequence: int | None = None
    busy: bool = False
    full: bool = False
    lags: list[float] = field(default_factory=list, repr=False)


def seals_later() -> bool:
    """Whether appends leave sealing to the sealer (PostgreSQL) or seal inline (SQLite)."""
    return connection.vendor == "postgresql"


def _schema(cursor: Any) -> str:
    """The tables' schema, named in every statement of a batch: a temporary table of the same
    name, which the session would find first, must not stand in for one."""
    cursor.execute("SELECT pg_catalog.quote_ident(pg_catalog.current_schema())")
    return cursor.fetchone()[0]


def _head(cursor: Any, schema: str) -> tuple[int, str, datetime | None]:
    head = f"SELECT sequence, hash, occurred_at FROM {schema}.audit_chain_head WHERE id = 1"  # noqa: S608
    cursor.execute(head)
    row = cursor.fetchone()
    return (row[0], row[1], row[2]) if row else (0, GENESIS_HASH, None)


def seal_pending(*, limit: int = BATCH_SIZE) -> SealBatch:
    """Seals up to `limit` committed events in one transaction; returns what it did. Does
    nothing on SQLite, where appends seal their own events."""
    if not seals_later():
        return SealBatch()
    batch = SealBatch()
    try:
        _seal_batch(batch, limit)
    except Exception:
        seal_failures.inc()
        _backlog_measure()
        raise
    if not batch.full:
        # Not after a full batch: counting a large backlog after each would slow catching up.
        _backlog_measure()
    if batch.count:
        for lag in batch.lags:
            seal_lag.observe(lag)
        sealed_total.inc(batch.count)
        from audit.fanout import kernel_push_soon

        kernel_push_soon()
    return batch


def _backlog_measure() -> None:
    """Sets the backlog gauges from what is unsealed now: busy or not, stuck or not."""
    try:
        with connection.cursor() as cursor:
            schema = _schema(cursor)
            cursor.execute(
                f"SELECT count(*), min(occurred_at) FROM {schema}.audit_event "  # noqa: S608
                "WHERE sequence IS NULL"
            )
            count, oldest = cursor.fetchone()
    except Exception:  # the database is down: the batch's own error says so
        return
    unsealed_events.set(count)
    unsealed_oldest.set(max((timezone.now() - oldest).total_seconds(), 0.0) if oldest else 0.0)


def _seal_batch(batch: SealBatch, limit: int) -> None:
    with transaction.atomic(durable=True), connection.cursor() as cursor:
        # A sealer that cannot get on must fail and be retried, not wait with the lock held.
        cursor.execute("SET LOCAL lock_timeout = '10s'")
        cursor.execute("SET LOCAL statement_timeout = '60s'")
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [SEAL_LOCK])
        if not cursor.fetchone()[0]:
            batch.busy = True
            return
        schema = _schema(cursor)
        head_sequence, head_hash, head_time = _head(cursor, schema)
        cursor.execute(
            f"SELECT {_COLUMNS} FROM {schema}.audit_event WHERE sequence IS NULL "  # noqa: S608
            "ORDER BY id LIMIT %s",
            [limit],
        )
        rows = cursor.fetchall()
        if not rows:
            return
        now = timezone.now()
        ids, sequences, prevs, hashes, times = [], [], [], [], []
        sequence, prev_hash, floor = head_sequence, head_hash, head_time
        for row in rows:
            event_id, inserted_at, data = row[0], row[1], row[7]
            sequence += 1
            occurred_at = inserted_at if floor is None or inserted_at >= floor else floor
            try:
                # Django reads jsonb as text (JSONField decodes it): the raw cursor gets text.
                data = json.loads(data) if isinstance(data, str) else data
                _, _, _, body = stored_record(
                    (sequence, occurred_at, *row[2:7], data, prev_hash, None)
                )
            except (ValueError, RecursionError, TypeError) as exc:
                logger.error("audit: event id %s cannot be sealed: %s", event_id, exc)
                raise UnsealableEvent(f"audit event id {event_id} cannot be sealed: {exc}") from exc
            event_hash = hashlib.sha256(body).hexdigest()
            ids.append(event_id)
            sequences.append(sequence)
            prevs.append(prev_hash)
            hashes.append(event_hash)
            times.append(occurred_at)
            batch.lags.append(max((now - inserted_at).total_seconds(), 0.0))
            prev_hash, floor = event_hash, occurred_at
        cursor.execute(_SEAL.format(schema=schema), [ids, sequences, prevs, hashes, times])
        if cursor.rowcount != len(rows):
            raise SealConflict(
                f"{len(rows) - cursor.rowcount} of {len(rows)} events were sealed meanwhile"
            )
        batch.count, batch.last_sequence = len(rows), sequence
        batch.full = len(rows) == limit


def seal_all(*, limit: int = BATCH_SIZE, wait_seconds: float = 10.0) -> int:
    """Seals until nothing committed is left unsealed; returns how many it sealed. Waits for
    a sealer that holds the lock (up to `wait_seconds`), since its batch may be the last."""
    sealed = 0
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            batch = seal_pending(limit=limit)
        except SealConflict:
            continue
        sealed += batch.count
        if batch.busy:
            if time.monotonic() > deadline:
                return sealed
            time.sleep(0.02)
            continue
        if not batch.full:
            return sealed


# --- Waking the sealer -------------------------------------------------------------------------


def seal_soon(countdown: float = 0.0) -> None:
    """Called after a commit that appended events (audit.services, on_commit), and by a seal
    task that found another sealer busy (whose batch may have missed what committed since)."""
    # A cache other processes do not see cannot carry the wake-up: each commit then enqueues
    # its own task, and the seal lock keeps that harmless.
    shared = not isinstance(caches["default"], LocMemCache)
    if shared and not cache.add(SCHEDULED_KEY, 1, timeout=countdown + SCHEDULED_GRACE_SECONDS):
        return
    from audit.tasks import audit_seal

    try:
        audit_seal.apply_async(countdown=countdown or None)
    except BrokerUnavailable:
        # The events are committed; the beat entry (or the next append) seals them.
        if shared:
            cache.delete(SCHEDULED_KEY)
        logger.warning("audit: the broker is unavailable; sealing waits for the beat")


def seal_wakeup_taken() -> None:
    """Called by the seal task before it reads: a commit after this wakes another task."""
    cache.delete(SCHEDULED_KEY)


# How soon a seal task that found the lock taken looks again.
BUSY_DELAY_SECONDS = 0.1


def seal_for(seconds: float = SEAL_BUDGET_SECONDS) -> int:
    """What the seal task runs: batches while they come back full, within `seconds`."""
    sealed = 0
    deadline = time.monotonic() + seconds
    while True:
        try:
            batch = seal_pending()
        except SealConflict:
            continue
        sealed += batch.count
        if batch.busy:
            seal_soon(BUSY_DELAY_SECONDS)
            return sealed
        if not batch.full or time.monotonic() > deadline:
            return sealed
