"""Pushing the chain to the Kernel's audit-append API, in order, from a worker.

The outbox is the chain itself plus one row, KernelCursor: how far the Kernel has acknowledged
it, and the failed attempts since, with the last error and when it happened. A push reads the
events after the cursor in sequence order, a batch at a time, sends them (marketplace.kernel,
`HttpKernel.audit_append`), and moves the cursor to what the Kernel acknowledged. Nothing is
ever skipped: a batch the Kernel refuses stays at the front until it takes it. The local
Kernel backend keeps no copy, so without MARKETPLACE_KERNEL_URL nothing here does anything
and the cursor stays where it is; a Kernel configured later answers 409 with where its copy
ends, and the push starts again from there.

Only sealed events are pushed (audit.sealer); the sealer wakes a push after each batch it
seals, and a push seals what is pending before it reads.

Waking a push. After each commit that sealed events, `kernel_push_soon` enqueues the push
task unless one is already due: the cache key SCHEDULED_KEY says so, taken with `cache.add`.
The task removes the key *before* it reads the events, so an event committed after that read
wakes another push: no wake-up is lost. A beat entry every minute is the safety net for a task
lost with its broker or a key left behind.

One push at a time. On PostgreSQL a push holds the cursor row (`select_for_update(
skip_locked=True)`) for the length of a batch, the Kernel call included: one row, and the
Kernel timeout bounds the wait. A push that finds the row taken schedules itself again shortly
rather than exit, since the holder may already have made its last read. On SQLite (dev and the
test defaults) the transaction mode is IMMEDIATE, so a transaction would lock the whole
database for the length of the call: there, the batch is read and sent outside any transaction
and the cursor moves only from the value the push read (a compare-and-set), so two pushes at
once only send the same events twice, which the Kernel's idempotence absorbs.

Backoff. A failed push adds one to the cursor's attempts, keeps the error and its time, and is
retried after 1, 2, 4, ... seconds (capped at a minute: KERNEL_BACKOFF), counted from the cursor,
not from one task: wake-ups that come during that window send nothing, so an outage meets one
attempt per window, however many events are appended meanwhile. `kernel_push_now` (the
audit_push_kernel command) pushes at once, whatever the window.
"""

import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.core.cache import cache, caches
from django.core.cache.backends.locmem import LocMemCache
from django.db import DatabaseError, connection, transaction
from django.db.models import F
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerUnavailable
from prometheus_client import Counter, Gauge, Histogram

from audit.chain import export_line, record_of
from audit.models import AuditEvent, ChainHead, KernelCursor
from audit.sealer import seal_all
from marketplace.backoff import Backoff
from marketplace.kernel import AuditAck, Kernel, KernelRejected, KernelUnavailable, get_kernel

logger = logging.getLogger(__name__)

BATCH_SIZE = 500
# Events committed within this long of each other go to the Kernel in one request.
PUSH_DELAY_SECONDS = 0.2
# How soon a push that found another one holding the cursor tries again.
BUSY_DELAY_SECONDS = 0.5
# How long a push task goes on before it hands over to a fresh one (the task's soft time
# limit is 60 s, and one Kernel call can take MARKETPLACE_KERNEL_TIMEOUT_SECONDS on top).
PUSH_BUDGET_SECONDS = 20.0
# The beat entry runs every minute anyway.
KERNEL_BACKOFF = Backoff(base=1.0, cap=60.0)
SCHEDULED_KEY = "audit:kernel-push"
# The key outlives the countdown by this much: if the task is lost, the next wake-up after
# that is not swallowed for longer.
SCHEDULED_GRACE_SECONDS = 5.0
LAST_ERROR_MAX_CHARS = 2000

kernel_lag = Histogram(
    "marketplace_audit_kernel_lag_seconds",
    "Time from an audit event's append to the Kernel's acknowledgement of it.",
    buckets=(0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 2.5, 3, 4, 5, 10, 30, 60, 300, 3600),
)
kernel_backlog = Gauge(
    "marketplace_audit_kernel_backlog_events",
    "Audit events appended but not yet acknowledged by the Kernel, as of the last push.",
    multiprocess_mode="livemostrecent",
)
kernel_push_failures = Counter(
    "marketplace_audit_kernel_push_failures_total",
    "Audit pushes to the Kernel that failed: unavailable (retried), rejected (a 4xx) or "
    "out_of_step (an acknowledgement that does not fit what was sent).",
    ["reason"],
)


class KernelPushFailed(Exception):
    """A push failed and was recorded on the cursor; `retry_in` is the backoff before the next."""

    def __init__(self, message: str, *, attempts: int, retry_in: float) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.retry_in = retry_in


class _OutOfStep(Exception):
    """The Kernel's acknowledgement does not fit the batch it was sent."""


@dataclass(frozen=True)
class KernelPush:
    acknowledged: int = 0  # events the Kernel acknowledged for the first time in this push
    acknowledged_sequence: int = 0  # where the cursor stands after it
    busy: bool = False  # another push held the cursor; this one did nothing
    retry_in: float | None = None  # still backing off after a failure; nothing was sent
    more: bool = False  # stopped at its time budget with events left

    @property
    def follow_up(self) -> float | None:
        """Seconds after which another push must run, or None when this one finished the job."""
        if self.busy:
            return BUSY_DELAY_SECONDS
        if self.retry_in is not None:
            return self.retry_in
        return 0.0 if self.more else None


@dataclass(frozen=True)
class KernelCursorState:
    head_sequence: int
    acknowledged_sequence: int
    acknowledged_at: datetime | None
    attempts: int
    last_error: str
    last_attempt_at: datetime | None

    @property
    def backlog(self) -> int:
        return max(self.head_sequence - self.acknowledged_sequence, 0)


# --- Waking a push -----------------------------------------------------------------------------


def kernel_push_soon() -> None:
    """Called after a commit that appended events (audit.services, on_commit)."""
    if not settings.KERNEL_URL:
        return
    kernel_push_later(PUSH_DELAY_SECONDS)


def kernel_push_later(countdown: float) -> None:
    """Enqueues the push task to run in `countdown` seconds, unless a push is already due."""
    # A cache that other processes do not see (the local-memory default) cannot carry the
    # wake-up between the process that appends and the worker; each wake-up then enqueues its
    # own task, and the cursor's single flight and backoff keep that harmless.
    shared = not isinstance(caches["default"], LocMemCache)
    if shared and not cache.add(SCHEDULED_KEY, 1, timeout=countdown + SCHEDULED_GRACE_SECONDS):
        return
    from audit.tasks import kernel_push

    try:
        kernel_push.apply_async(countdown=countdown)
    except BrokerUnavailable:
        # The events are committed and the cursor still points before them: the beat entry
        # pushes them once the broker is back. The commit that called this must not fail.
        if shared:
            cache.delete(SCHEDULED_KEY)
        logger.warning("audit: the broker is unavailable; the Kernel push waits for the beat")


def kernel_push_wakeup_taken() -> None:
    """Called by the push task before it reads: a commit after this wakes another push."""
    cache.delete(SCHEDULED_KEY)


def kernel_push_hold(seconds: float) -> None:
    """Keeps wake-ups from scheduling pushes for `seconds`: a retry is due then."""
    cache.set(SCHEDULED_KEY, 1, timeout=seconds + SCHEDULED_GRACE_SECONDS)


# --- Pushing -----------------------------------------------------------------------------------


def kernel_push(
    *, force: bool = False, time_budget: float | None = PUSH_BUDGET_SECONDS
) -> KernelPush:
    """Sends the events the Kernel has not acknowledged, in order, until none is left, another
    push holds the cursor, or `time_budget` seconds have passed (None: no limit). While the
    cursor is backing off after a failure it sends nothing, unless `force`.

    Raises KernelPushFailed once the failure (attempts, last_error, last_attempt_at) is saved.
    Not for use inside a transaction: each batch commits on its own (durable, on PostgreSQL)."""
    if not settings.KERNEL_URL:
        return KernelPush(acknowledged_sequence=kernel_cursor_state().acknowledged_sequence)
    # Only sealed events go out; sealing what is pending first spares a wait for the sealer.
    seal_all(wait_seconds=0)
    kernel = get_kernel()
    deadline = None if time_budget is None else time.monotonic() + time_budget
    acknowledged = 0
    try:
        while True:
            step = _push_batch(kernel, force=force)
            acknowledged += step.acknowledged
            if step.busy or step.retry_in is not None or not step.more:
                return KernelPush(
                    acknowledged=acknowledged,
                    acknowledged_sequence=step.acknowledged_sequence,
                    busy=step.busy,
                    retry_in=step.retry_in,
                )
            if deadline is not None and time.monotonic() >= deadline:
                return KernelPush(
                    acknowledged=acknowledged,
                    acknowledged_sequence=step.acknowledged_sequence,
                    more=True,
                )
    finally:
        with contextlib.suppress(DatabaseError):  # a gauge must not hide the push's outcome
            kernel_backlog.set(kernel_cursor_state().backlog)


def kernel_push_now() -> KernelCursorState:
    """The replay action: pushes everything at once, whatever the backoff, and returns the
    cursor's state. Raises KernelPushFailed (recorded) if the Kernel still fails."""
    kernel_push(force=True, time_budget=None)
    return kernel_cursor_state()


def kernel_cursor_state() -> KernelCursorState:
    cursor = KernelCursor.objects.filter(id=1).first() or KernelCursor(id=1)
    head = ChainHead.objects.filter(id=1).values_list("sequence", flat=True).first() or 0
    return KernelCursorState(
        head_sequence=head,
        acknowledged_sequence=cursor.acknowledged_sequence,
        acknowledged_at=cursor.acknowledged_at,
        attempts=cursor.attempts,
        last_error=cursor.last_error,
        last_attempt_at=cursor.last_attempt_at,
    )


def _push_batch(kernel: Kernel, *, force: bool) -> KernelPush:
    """One batch. KernelPush.more here means: look again, there may be more."""
    hold = connection.features.has_select_for_update_skip_locked
    failure: KernelPushFailed | None = None
    with transaction.atomic(durable=True) if hold else contextlib.nullcontext():
        cursor = _cursor(lock=hold)
        if cursor is None:
            return KernelPush(busy=True)
        at = cursor.acknowledged_sequence
        wait = 0.0 if force else _backoff_left(cursor)
        if wait > 0:
            return KernelPush(acknowledged_sequence=at, retry_in=wait)
        events = list(AuditEvent.objects.filter(sequence__gt=at).order_by("sequence")[:BATCH_SIZE])
        if not events:
            return KernelPush(acknowledged_sequence=at)
        try:
            ack = kernel.audit_append(
                lines=[_line(event) for event in events], last_sequence=events[-1].sequence
            )
            step = _apply(cursor, events, ack)
        except (KernelUnavailable, KernelRejected, _OutOfStep) as exc:
            # Saved in this transaction, which commits: the failure is part of the outbox.
            failure = _record_failure(cursor, exc)
    if failure is not None:
        raise failure
    return step


def _cursor(*, lock: bool) -> KernelCursor | None:
    """The cursor row, created if missing; with `lock`, locked, or None if another push holds
    it. Caller holds a transaction when `lock`."""
    rows = KernelCursor.objects.filter(id=1)
    if lock:
        rows = rows.select_for_update(skip_locked=True)
    cursor = rows.first()
    if cursor is None and not KernelCursor.objects.filter(id=1).exists():
        # The first push ever: let a concurrent first push win the insert.
        KernelCursor.objects.bulk_create([KernelCursor(id=1)], ignore_conflicts=True)
        cursor = rows.first()
    return cursor


def _backoff_left(cursor: KernelCursor) -> float:
    if not cursor.attempts or cursor.last_attempt_at is None:
        return 0.0
    due = cursor.last_attempt_at.timestamp() + KERNEL_BACKOFF.seconds(cursor.attempts)
    return max(due - time.time(), 0.0)


def _line(event: AuditEvent) -> bytes:
    record = record_of(
        sequence=event.sequence,
        occurred_at=event.occurred_at,
        actor_type=event.actor_type,
        actor_id=event.actor_id,
        action=event.action,
        subject_type=event.subject_type,
        subject_id=event.subject_id,
        data=event.data,
        prev_hash=event.prev_hash,
    )
    return export_line(record, event.hash)


def _apply(cursor: KernelCursor, events: list[AuditEvent], ack: AuditAck) -> KernelPush:
    """Moves the cursor to what the Kernel acknowledged. Caller holds the cursor (PostgreSQL)
    or has read it (SQLite: the update is then a compare-and-set on the value read)."""
    first, last = events[0].sequence, events[-1].sequence
    at = cursor.acknowledged_sequence
    rows = KernelCursor.objects.filter(id=1, acknowledged_sequence=at)
    now = timezone.now()
    if not ack.in_step:
        through = ack.acknowledged_through
        if through >= first - 1:
            raise _OutOfStep(
                f"the Kernel answered 409 to events #{first}-#{last}, yet says it holds events "
                f"through #{through}, which leaves nothing missing before #{first}"
            )
        # The Kernel lost the end of its copy (restored from a backup, or a Kernel that was
        # configured after events were appended): send again from where its copy ends.
        rows.update(acknowledged_sequence=through, last_attempt_at=now)
        logger.warning(
            "audit: the Kernel's copy ends at #%s, behind the cursor at #%s; sending again from "
            "#%s",
            through,
            at,
            through + 1,
        )
        return KernelPush(acknowledged_sequence=through, more=True)
    # Never past what was sent: the rest is not ours to vouch for.
    through = min(ack.acknowledged_through, last)
    if through < first:
        raise _OutOfStep(
            f"the Kernel acknowledged only through #{ack.acknowledged_through} after being "
            f"sent events #{first}-#{last}: it kept none of them"
        )
    moved = rows.update(
        acknowledged_sequence=through,
        acknowledged_at=now,
        attempts=0,
        last_error="",
        last_attempt_at=now,
    )
    if not moved:  # SQLite only: another push moved the cursor first and counted these
        return KernelPush(acknowledged_sequence=through, more=True)
    for event in events:
        if event.sequence > through:
            break
        kernel_lag.observe((now - event.occurred_at).total_seconds())
    return KernelPush(acknowledged=through - at, acknowledged_sequence=through, more=True)


def _record_failure(cursor: KernelCursor, exc: Exception) -> KernelPushFailed:
    reason = (
        "unavailable"
        if isinstance(exc, KernelUnavailable)
        else "rejected"
        if isinstance(exc, KernelRejected)
        else "out_of_step"
    )
    message = str(exc)[:LAST_ERROR_MAX_CHARS]
    KernelCursor.objects.filter(id=1).update(
        attempts=F("attempts") + 1, last_error=message, last_attempt_at=timezone.now()
    )
    attempts = cursor.attempts + 1
    retry_in = KERNEL_BACKOFF.seconds(attempts)
    kernel_push_failures.labels(reason=reason).inc()
    log = logger.error if reason != "unavailable" else logger.warning
    log(
        "audit: pushing events after #%s to the Kernel failed (attempt %s, next in %.0f s): %s",
        cursor.acknowledged_sequence,
        attempts,
        retry_in,
        message,
    )
    return KernelPushFailed(message, attempts=attempts, retry_in=retry_in)
