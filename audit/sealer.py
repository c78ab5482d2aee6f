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
    "Audit events committed but not yet sealed, as of the last batch.",
    multiprocess_mode="livemostrecent",
)

_COLUMNS = "id, occurred_at, actor_type, actor_id, action, subject_type, subject_id, data"

_SEAL = """
UPDATE audit_event AS e
   SET sequence = v.sequence, prev_hash = v.prev_hash, hash = v.hash, occurred_at = v.occurred_at
  FROM unnest(%s::bigint[], %s::bigint[], %s::text[], %s::text[], %s::timestamptz[])
       AS v (id, sequence, prev_hash, hash, occurred_at)
 WHERE e.id = v.id AND e.sequence IS NULL
"""


class SealConflict(Exception):
    """The events changed under the batch (another sealer got there first); it rolled back."""


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


def _head(cursor: Any) -> tuple[int, str, datetime | None]:
    cursor.execute("SELECT sequence, hash, occurred_at FROM audit_chain_head WHERE id = 1")
    row = cursor.fetchone()
    return (row[0], row[1], row[2]) if row else (0, GENESIS_HASH, None)


def seal_pending(*, limit: int = BATCH_SIZE) -> SealBatch:
    """Seals up to `limit` committed events in one transaction; returns what it did. Does
    nothing on SQLite, where appends seal their own events."""
    if not seals_later():
        return SealBatch()
    batch = SealBatch()
    with transaction.atomic(durable=True), connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [SEAL_LOCK])
        if not cursor.fetchone()[0]:
            batch.busy = True
            return batch
        head_sequence, head_hash, head_time = _head(cursor)
        cursor.execute(
            f"SELECT {_COLUMNS} FROM audit_event WHERE sequence IS NULL ORDER BY id LIMIT %s",  # noqa: S608
            [limit],
        )
        rows = cursor.fetchall()
        if not rows:
            unsealed_events.set(0)
            return batch
        now = timezone.now()
        ids, sequences, prevs, hashes, times = [], [], [], [], []
        sequence, prev_hash, floor = head_sequence, head_hash, head_time
        for row in rows:
            event_id, inserted_at, data = row[0], row[1], row[7]
            sequence += 1
            occurred_at = inserted_at if floor is None or inserted_at >= floor else floor
            # Django reads jsonb as text (JSONField decodes it), so the raw cursor gets text.
            data = json.loads(data) if isinstance(data, str) else data
            _, _, _, body = stored_record((sequence, occurred_at, *row[2:7], data, prev_hash, None))
            event_hash = hashlib.sha256(body).hexdigest()
            ids.append(event_id)
            sequences.append(sequence)
            prevs.append(prev_hash)
            hashes.append(event_hash)
            times.append(occurred_at)
            batch.lags.append(max((now - inserted_at).total_seconds(), 0.0))
            prev_hash, floor = event_hash, occurred_at
        cursor.execute(_SEAL, [ids, sequences, prevs, hashes, times])
        if cursor.rowcount != len(rows):
            raise SealConflict(
                f"{len(rows) - cursor.rowcount} of {len(rows)} events were sealed meanwhile"
            )
        batch.count, batch.last_sequence = len(rows), sequence
        batch.full = len(rows) == limit
    for lag in batch.lags:
        seal_lag.observe(lag)
    sealed_total.inc(batch.count)
    if not batch.full:
        unsealed_events.set(0)
    from audit.fanout import kernel_push_soon

    kernel_push_soon()
    return batch


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


def seal_soon() -> None:
    """Called after a commit that appended events (audit.services, on_commit)."""
    # A cache other processes do not see cannot carry the wake-up: each commit then enqueues
    # its own task, and the seal lock keeps that harmless.
    shared = not isinstance(caches["default"], LocMemCache)
    if shared and not cache.add(SCHEDULED_KEY, 1, timeout=SCHEDULED_GRACE_SECONDS):
        return
    from audit.tasks import audit_seal

    try:
        audit_seal.apply_async()
    except BrokerUnavailable:
        # The events are committed; the beat entry (or the next append) seals them.
        if shared:
            cache.delete(SCHEDULED_KEY)
        logger.warning("audit: the broker is unavailable; sealing waits for the beat")


def seal_wakeup_taken() -> None:
    """Called by the seal task before it reads: a commit after this wakes another task."""
    cache.delete(SCHEDULED_KEY)


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
        if batch.busy or not batch.full or time.monotonic() > deadline:
            return sealed
