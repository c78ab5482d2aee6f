"""Audit work done by the workers. Each task is named after the service it calls and declares
its retry policy; running one twice is harmless."""

import logging

from celery import Task, shared_task

from audit import checkpoints, exports, fanout, sealer
from marketplace.backoff import Backoff

logger = logging.getLogger(__name__)

# Before an export that met a transient storage error is tried again: a minute, doubling,
# at most an hour.
EXPORT_BACKOFF = Backoff(base=60, cap=3600)


@shared_task(acks_late=True, soft_time_limit=60, time_limit=90)
def audit_seal() -> int:
    """Seals committed audit events (audit.sealer): woken after the commits that append them,
    and by beat every few seconds as the safety net. Safe to run twice: one sealer holds the
    seal lock at a time, and a batch seals only events that are still unsealed."""
    sealer.seal_wakeup_taken()
    return sealer.seal_for()


@shared_task(bind=True, acks_late=True, soft_time_limit=60, time_limit=90, max_retries=None)
def kernel_push(self: Task) -> int:
    """Pushes the events the Kernel has not acknowledged (audit.fanout). Woken after the
    commits that append events, and by beat every minute as a safety net. Safe to run twice:
    one push holds the cursor at a time and the Kernel ignores what it already has.

    A failed push is recorded on the cursor and retried after the cursor's backoff, with no
    last retry: the events must reach the Kernel, and an operator sees the attempts and the
    last error on the cursor (audit_push_kernel). While the retry is due, wake-ups from new
    commits do not schedule pushes of their own."""
    fanout.kernel_push_wakeup_taken()
    try:
        push = fanout.kernel_push()
    except fanout.KernelPushFailed as exc:
        fanout.kernel_push_hold(exc.retry_in)
        raise self.retry(exc=exc, countdown=exc.retry_in) from exc
    if push.follow_up is not None:
        fanout.kernel_push_later(push.follow_up)
    return push.acknowledged_sequence


def _export_transient(exc: Exception) -> bool:
    """Storage and database errors that a later attempt may not meet: connection failures,
    timeouts, 5xx and throttling. A 4xx (no such bucket, access denied) needs an operator."""
    from botocore.exceptions import ClientError, HTTPClientError
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from django.db import OperationalError

    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        code = exc.response.get("Error", {}).get("Code", "")
        return status >= 500 or status in (408, 409, 429) or code in ("SlowDown", "Throttling")
    return isinstance(exc, BotoConnectionError | HTTPClientError | OSError | OperationalError)


@shared_task(bind=True, acks_late=True, soft_time_limit=1800, time_limit=1900, max_retries=8)
def audit_exports_catch_up(self: Task) -> int:
    """Exports every UTC day up to yesterday that is not exported yet (beat, 00:30 UTC), and
    returns how many it registered. Safe to run twice: a registered day is skipped, and what a
    failed run stored is accepted only when identical (audit.exports).

    Transient storage errors are retried with exponential backoff (1 minute to an hour); a
    conflict with what is stored, or a 4xx, is not: it is logged and fails the task, and the
    next night's run tries again from the first missing day. Failures are counted by the
    service (marketplace_audit_export_failures_total)."""
    try:
        return len(exports.audit_exports_catch_up())
    except Exception as exc:
        if isinstance(exc, exports.ExportError) or not _export_transient(exc):
            logger.error("audit export failed and is not retried: %s", exc)
            raise
        countdown = EXPORT_BACKOFF.seconds(self.request.retries + 1)
        raise self.retry(exc=exc, countdown=countdown) from exc


@shared_task(acks_late=True, soft_time_limit=60, time_limit=90)
def checkpoint_create() -> int | None:
    """Signs the chain head; does nothing when the last event is already signed."""
    checkpoint = checkpoints.checkpoint_create()
    return checkpoint.sequence if checkpoint else None
