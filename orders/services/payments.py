"""Running stored webhook events through their handlers, exactly once, and what a failed
attempt leads to: a retry with backoff, or a dead letter for an operator.

An event is processed in one transaction that locks its row, then its order's row, applies the
change (status, royalties, Finance posting, audit event: orders/services/webhook_handlers.py)
and marks the event processed. Whatever has to be asked of the payment provider to find the
order is asked before that transaction opens, so no row stays locked while the provider
answers. A worker that dies half-way leaves nothing behind, and the redelivered task or the
beat sweep runs it again; a second run finds the event processed and stops.

Failures: the order not known yet, the provider unreachable and database errors are retried
with WEBHOOK_BACKOFF; an event that contradicts its order is dead-lettered at once; so is one
that meets a bug (any other exception), with its traceback, since running the same code again
cannot help. An operator replays it once the cause is fixed (webhook_event_replay).
"""

import logging
import traceback
from datetime import datetime

from django.conf import settings
from django.db import DatabaseError, transaction
from django.utils import timezone

from audit.services import audit_append
from marketplace.actors import Actor
from marketplace.backoff import Backoff
from orders.gateways import GatewayUnavailable
from orders.metrics import webhook_failures
from orders.models import WebhookAttempt, WebhookEvent, WebhookStatus
from orders.services.webhook_handlers import (
    HANDLERS,
    WEBHOOK_WORKER,
    EventDeferred,
    EventUnusable,
    event_apply,
)

logger = logging.getLogger(__name__)

__all__ = [
    "WEBHOOK_BACKOFF",
    "EventDeferred",
    "EventUnusable",
    "webhook_event_process",
    "webhook_event_replay",
]

# 30 s, 1 min, 2 min, ... capped at one hour.
WEBHOOK_BACKOFF = Backoff(base=30, cap=3600)

# What last_error keeps of a failure; the attempt's own record keeps all of it.
LAST_ERROR_CHARS = 4000


def webhook_event_process(*, event_pk: int, force: bool = False) -> str:
    """Processes one stored event if it still needs it. Answers its status afterwards.

    `force` also takes a dead-lettered event (an operator's replay). Failures are recorded on
    the event (attempts, the error, when to try next). Retried ones dead-letter it after
    MARKETPLACE_WEBHOOK_MAX_ATTEMPTS tries; an unusable event or a bug dead-letters it at once.
    Nothing is raised for the worker to retry: the event's row is the retry's record.
    """
    started = timezone.now()
    open_statuses = {WebhookStatus.RECEIVED, WebhookStatus.FAILED}
    if force:
        open_statuses.add(WebhookStatus.DEAD)
    try:
        return _process(event_pk, open_statuses, started)
    except (EventDeferred, GatewayUnavailable) as exc:
        return _failure_record(event_pk, started, str(exc), terminal=False)
    except EventUnusable as exc:
        return _failure_record(event_pk, started, str(exc), terminal=True)
    except DatabaseError as exc:
        # A lock timeout, a lost connection: recorded (if the database lets us) and retried.
        logger.warning("webhook event %s failed on the database: %s", event_pk, exc)
        return _failure_record(event_pk, started, f"database error: {exc}", terminal=False)
    except Exception:
        # A bug (an event of a shape no handler foresaw, a mistake in one): the same code would
        # fail the same way on every retry, so the event waits, dead, for the fix and a replay.
        logger.exception("webhook event %s failed on an unforeseen error", event_pk)
        return _failure_record(event_pk, started, traceback.format_exc(), terminal=True)


def _process(event_pk: int, open_statuses: set[str], started: datetime) -> str:
    """One attempt. The order is found first, with no transaction open (it may take a call to
    the provider); then the event's row is locked, its status read again, and the handler
    applied under that lock and the order's."""
    event = WebhookEvent.objects.filter(pk=event_pk).first()
    if event is None or event.status not in open_statuses:
        return event.status if event else "missing"
    handler = HANDLERS.get(event.type)
    order_id = handler.find_order(event.data_object) if handler else None
    with transaction.atomic(durable=True):
        event = WebhookEvent.objects.select_for_update().filter(pk=event_pk).first()
        if event is None or event.status not in open_statuses:
            return event.status if event else "missing"
        status, outcome = event_apply(event, handler, order_id)
        event.status = status
        event.outcome = outcome[:300]
        event.attempts += 1
        event.processed_at = timezone.now()
        event.next_attempt_at = None
        event.last_error = ""
        # Not the payload: it is as received, and rewriting it would cost more than the rest.
        event.save(
            update_fields=[
                "status", "outcome", "attempts", "processed_at", "next_attempt_at",
                "last_error", "order",
            ]
        )  # fmt: skip
        WebhookAttempt.objects.create(
            event=event, number=event.attempts, started_at=started, succeeded=True, detail=outcome
        )
    return status


def _last_error(error: str) -> str:
    # A traceback ends with what went wrong: an over-long one keeps its end.
    if len(error) <= LAST_ERROR_CHARS:
        return error
    return "…" + error[-(LAST_ERROR_CHARS - 1) :]


def _failure_record(event_pk: int, started: datetime, error: str, *, terminal: bool) -> str:
    """Records a failed attempt: `failed` with the next try after the backoff, or `dead` (audit
    `webhook.dead_lettered`) when `terminal` or out of attempts. Answers the status."""
    webhook_failures.labels(reason="processing_failed").inc()
    with transaction.atomic():
        event = WebhookEvent.objects.select_for_update().get(pk=event_pk)
        if event.status not in (WebhookStatus.RECEIVED, WebhookStatus.FAILED, WebhookStatus.DEAD):
            return event.status
        event.attempts += 1
        event.last_error = _last_error(error)
        dead = terminal or event.attempts >= settings.WEBHOOK_MAX_ATTEMPTS
        event.status = WebhookStatus.DEAD if dead else WebhookStatus.FAILED
        event.next_attempt_at = (
            None if dead else timezone.now() + WEBHOOK_BACKOFF.delay(event.attempts)
        )
        event.save(update_fields=["attempts", "last_error", "status", "next_attempt_at"])
        WebhookAttempt.objects.create(
            event=event, number=event.attempts, started_at=started, succeeded=False, detail=error
        )
        if dead:
            audit_append(
                actor=WEBHOOK_WORKER,
                action="webhook.dead_lettered",
                subject=event,
                data={
                    "event": event.event_id,
                    "event_type": event.type,
                    "attempts": event.attempts,
                    "error": error.splitlines()[-1][:300] if error else "",
                },
            )
        return event.status


def webhook_event_replay(*, event_pk: int, actor: Actor) -> str:
    """An operator sends a failed or dead-lettered event through processing again now."""
    with transaction.atomic():
        event = WebhookEvent.objects.select_for_update().get(pk=event_pk)
        if event.status not in (WebhookStatus.FAILED, WebhookStatus.DEAD, WebhookStatus.RECEIVED):
            return event.status
        audit_append(
            actor=actor,
            action="webhook.replayed",
            subject=event,
            data={"event": event.event_id, "event_type": event.type, "was": event.status},
        )
    return webhook_event_process(event_pk=event_pk, force=True)
