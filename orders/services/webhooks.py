"""Receiving payment-provider webhooks: verify the signature, store the event once by its id,
hand it to a worker after the commit.

The hand-over is a doorbell when the cache is Redis (shared by every process): the first event
stored while no dispatch is pending rings it and queues one `webhook_events_dispatch` task; the
events stored until that task runs only find it ringing. The dispatch clears the doorbell, then
hands every stored event no dispatch has handed out yet to a worker, one processing task each.
So the request path costs one Redis command instead of a Celery publish per event, and every
event still gets its own task. (An event that finds the doorbell ringing committed before the
dispatch cleared it, so that dispatch's query sees it.) With the local-memory cache (the
embedded defaults, where a doorbell would not be shared with the worker) each event's task is
queued directly.

Signatures follow Stripe's scheme (`Stripe-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of
"<t>.<body>">[,v1=...]`), checked against every configured secret, so a secret rotation (Stripe
then signs with both) needs no downtime. Timestamps are refused beyond the tolerance in either
direction (the `stripe` library only refuses old ones). The tests sign with the `stripe`
library's own function, which keeps this check honest to Stripe's scheme.
"""

import hashlib
import hmac
import logging
import re
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import DataError, IntegrityError, transaction
from django.utils import timezone

from marketplace.api.parsers import JsonBodyRefused, json_parse
from orders.exceptions import WebhookBodyInvalid, WebhookSignatureInvalid
from orders.metrics import webhook_failures
from orders.models import WebhookEvent, WebhookStatus
from orders.services.transactions import committed_alone

logger = logging.getLogger(__name__)

RAW_BODY_KEPT = 64 * 1024
DOORBELL_KEY = "orders:webhook-doorbell"
# How long a ring stands in for a queued dispatch. A dispatch lost before it ran (its worker
# died) delays the events behind it this long, or until the sweep, at most.
DOORBELL_SECONDS = 5
DISPATCH_BATCH = 200
# The widths of WebhookEvent.event_id and .type.
EVENT_ID_MAX = 255
EVENT_TYPE_MAX = 100


def webhook_secrets() -> list[str]:
    if settings.STRIPE_WEBHOOK_SECRETS:
        return list(settings.STRIPE_WEBHOOK_SECRETS)
    # The local gateway signs with a secret derived from the platform's own key.
    digest = hashlib.sha256(b"local-gateway-webhook:" + settings.SECRET_KEY.encode()).hexdigest()
    return [f"whsec_local_{digest[:32]}"]


def signature_header(payload: bytes, *, secret: str, timestamp: int | None = None) -> str:
    """A Stripe-Signature header for `payload` (what the local gateway sends)."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def _refuse(reason: str, detail: str) -> WebhookSignatureInvalid:
    webhook_failures.labels(reason=reason).inc()
    return WebhookSignatureInvalid(detail, reason=reason)


def signature_verify(payload: bytes, header: str | None, *, now: float | None = None) -> None:
    """Refuses (WebhookSignatureInvalid, counted by reason) unless one `v1` signature in the
    header is the HMAC of this exact body under a configured secret, with a timestamp within
    the tolerance either way."""
    tolerance = settings.STRIPE_WEBHOOK_TOLERANCE_SECONDS
    if not header:
        raise _refuse("signature_missing", "The Stripe-Signature header is missing.")
    fields = [part.split("=", 1) for part in header.split(",") if "=" in part]
    timestamps = [value.strip() for key, value in fields if key.strip() == "t"]
    # ASCII digits only: str.isdigit() also takes "²", which int() then refuses.
    if len(timestamps) != 1 or not re.fullmatch(r"[0-9]{1,12}", timestamps[0]):
        raise _refuse("signature_malformed", "The Stripe-Signature header has no valid t=.")
    timestamp = int(timestamps[0])
    now = time.time() if now is None else now
    if timestamp > now + tolerance:
        raise _refuse(
            "timestamp_future",
            f"The signature's timestamp is more than {tolerance} s in the future.",
        )
    if timestamp < now - tolerance:
        raise _refuse(
            "timestamp_stale", f"The signature's timestamp is more than {tolerance} s old."
        )
    signatures = [value.strip() for key, value in fields if key.strip() == "v1"]
    # The HMAC is over the body's bytes as received. (The `stripe` library's verify_header
    # decodes the body as UTF-8 first, so a signed body that is not UTF-8 would be a 500 there
    # rather than a recorded, refused delivery.)
    signed_payload = f"{timestamp}.".encode() + payload
    for secret in webhook_secrets():
        expected = hmac.new(secret.encode(), signed_payload, hashlib.sha256).hexdigest()
        if any(hmac.compare_digest(expected, signature) for signature in signatures):
            return
    raise _refuse("signature_invalid", "No v1 signature matches the webhook secret.")


def webhook_receive(*, payload: bytes, signature: str | None) -> tuple[WebhookEvent, bool]:
    """Verifies and stores one delivery; answers the event and whether it is new.

    A new event is handed to a worker once its row has committed. A body that is signed but
    is not an event is recorded (status `rejected`) and refused with a 400.
    """
    signature_verify(payload, signature)
    try:
        # The API's limits (size, depth, UTF-8, duplicate names), and no NUL or lone surrogate
        # in any string: PostgreSQL's text and jsonb refuse both, on every database alike here.
        event = json_parse(payload)
    except JsonBodyRefused as exc:
        raise _body_refused(payload, exc.detail[:1].lower() + exc.detail[1:].rstrip(".")) from None
    try:
        if not isinstance(event, dict):
            raise ValueError("not an object")
        event_id, event_type = event.get("id"), event.get("type")
        if not isinstance(event_id, str) or not event_id or not isinstance(event_type, str):
            raise ValueError("an event needs a string `id` and `type`")
        if len(event_id) > EVENT_ID_MAX or not 0 < len(event_type) <= EVENT_TYPE_MAX:
            raise ValueError(
                f"`id` takes 1 to {EVENT_ID_MAX} characters, `type` 1 to {EVENT_TYPE_MAX}"
            )
    except ValueError as exc:
        raise _body_refused(payload, str(exc)) from None

    try:
        # Committed before the answer: the 200 says the event is stored.
        with committed_alone():
            stored = WebhookEvent.objects.create(
                event_id=event_id,
                type=event_type,
                livemode=bool(event.get("livemode")),
                payload=event,
            )
    except IntegrityError:
        return WebhookEvent.objects.get(event_id=event_id), False
    except DataError as exc:
        # JSON that PostgreSQL's jsonb cannot hold (a \u0000 in a string).
        raise _body_refused(payload, f"not storable: {exc}".splitlines()[0]) from None
    # At once when the insert has committed on its own; after the commit of the caller's
    # transaction otherwise.
    transaction.on_commit(lambda: _processing_enqueue(stored.pk))
    return stored, True


def _doorbell_shared() -> bool:
    """Whether the cache is one every process shares (django-redis), so a doorbell rung here
    is heard by the worker's dispatch."""
    return hasattr(cache, "client") and hasattr(cache.client, "get_client")


def _doorbell_ring() -> bool:
    """Rings the doorbell; True when it was not ringing (no dispatch is pending). True as well
    when the cache cannot be asked, so that the event still goes to a worker."""
    try:
        return bool(cache.add(DOORBELL_KEY, 1, timeout=DOORBELL_SECONDS))
    except Exception:  # whatever the cache answers, the event must not wait for the sweep
        return True


def _doorbell_clear() -> None:
    try:
        cache.delete(DOORBELL_KEY)
    except Exception as exc:  # it rings on until its timeout: later events wait that long
        logger.warning("the webhook doorbell could not be cleared: %s", " ".join(str(exc).split()))


def _processing_enqueue(event_pk: int) -> None:
    """Hands a stored event to a worker (through the doorbell, see above). With the broker down
    only the hand-over is lost: the event is stored, so it is acknowledged (200) and the beat
    sweep (webhooks_retry_due) sends it once it has waited MARKETPLACE_WEBHOOK_STRANDED_SECONDS."""
    from orders import tasks  # the task module imports this one

    try:
        if not _doorbell_shared():
            tasks.webhook_event_process.delay(event_pk)
        elif _doorbell_ring():
            tasks.webhook_events_dispatch.delay()
    # Whatever the broker answers (unreachable, out of memory, a read-only replica in a
    # failover), the event is stored: the sweep sends it.
    except Exception as exc:
        if _doorbell_shared():
            _doorbell_clear()  # so that the next event tries the broker again
        logger.warning(
            "webhook event %s stored; the broker is unavailable, the sweep will process it: %s",
            event_pk,
            " ".join(str(exc).split()),
        )


def webhook_events_dispatch(*, send: Callable[[int], Any]) -> int:
    """Hands each stored event that no dispatch has handed out yet to `send` (the processing
    task's delay), oldest first, and answers how many. Clears the doorbell first: an event
    stored from then on rings it again, and one stored before is seen here.

    Each batch is marked dispatched in a transaction that skips rows another dispatch holds, so
    concurrent dispatches hand out disjoint events. An event marked but never sent (the broker
    failed in between, the worker died) is still `received`: the sweep sends it when stranded.
    """
    _doorbell_clear()
    handed = 0
    while True:
        with transaction.atomic():
            batch = list(
                WebhookEvent.objects.undispatched()
                .select_for_update(skip_locked=True)
                .order_by("pk")
                .values_list("pk", flat=True)[:DISPATCH_BATCH]
            )
            if batch:
                WebhookEvent.objects.filter(pk__in=batch).update(dispatched_at=timezone.now())
        if not batch:
            return handed
        for event_pk in batch:
            send(event_pk)
        handed += len(batch)


def _body_refused(payload: bytes, reason: str) -> WebhookBodyInvalid:
    """Records a signed body that is not an event (status `rejected`) and the error to raise."""
    webhook_failures.labels(reason="body_invalid").inc()
    # Text columns cannot hold NUL characters.
    raw = payload[:RAW_BODY_KEPT].decode("utf-8", "replace").replace("\x00", "\ufffd")
    WebhookEvent.objects.create(
        status=WebhookStatus.REJECTED, raw_body=raw, outcome=f"unreadable body: {reason}"[:300]
    )
    return WebhookBodyInvalid(f"The body is not a Stripe event ({reason}).")
