"""Receiving payment-provider webhooks: verify the signature, store the event once by its id,
hand it to a worker after the commit.

Signatures follow Stripe's scheme (`Stripe-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of
"<t>.<body>">[,v1=...]`), checked with the `stripe` library against every configured secret,
so a secret rotation (Stripe then signs with both) needs no downtime. The library only refuses
timestamps older than the tolerance; one further ahead than the tolerance is refused here too.
"""

import hashlib
import hmac
import json
import time

import stripe
from django.conf import settings
from django.db import IntegrityError, transaction

from orders.exceptions import WebhookBodyInvalid, WebhookSignatureInvalid
from orders.metrics import webhook_failures
from orders.models import WebhookEvent, WebhookStatus

RAW_BODY_KEPT = 64 * 1024


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
    tolerance = settings.STRIPE_WEBHOOK_TOLERANCE_SECONDS
    if not header:
        raise _refuse("signature_missing", "The Stripe-Signature header is missing.")
    fields = [part.split("=", 1) for part in header.split(",") if "=" in part]
    timestamps = [value for key, value in fields if key.strip() == "t"]
    if len(timestamps) != 1 or not timestamps[0].strip().isdigit():
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
    for secret in webhook_secrets():
        try:
            stripe.WebhookSignature.verify_header(payload, header, secret, tolerance=tolerance)
        except stripe.SignatureVerificationError:
            continue
        return
    raise _refuse("signature_invalid", "No v1 signature matches the webhook secret.")


def webhook_receive(*, payload: bytes, signature: str | None) -> tuple[WebhookEvent, bool]:
    """Verifies and stores one delivery; answers the event and whether it is new.

    A new event is handed to a worker once its row has committed. A body that is signed but
    is not an event is recorded (status `rejected`) and refused with a 400.
    """
    signature_verify(payload, signature)
    try:
        event = json.loads(payload)
        if not isinstance(event, dict):
            raise ValueError("not an object")
        event_id, event_type = event.get("id"), event.get("type")
        if not isinstance(event_id, str) or not event_id or not isinstance(event_type, str):
            raise ValueError("an event needs a string `id` and `type`")
    except (ValueError, UnicodeDecodeError) as exc:
        webhook_failures.labels(reason="body_invalid").inc()
        WebhookEvent.objects.create(
            status=WebhookStatus.REJECTED,
            raw_body=payload[:RAW_BODY_KEPT].decode("utf-8", "replace"),
            outcome=f"unreadable body: {exc}"[:300],
        )
        raise WebhookBodyInvalid(f"The body is not a Stripe event ({exc}).") from None

    from orders.tasks import webhook_process  # the task module imports this one

    try:
        with transaction.atomic():
            stored = WebhookEvent.objects.create(
                event_id=event_id,
                type=event_type,
                livemode=bool(event.get("livemode")),
                payload=event,
            )
            transaction.on_commit(lambda: webhook_process.delay(stored.pk))
    except IntegrityError:
        return WebhookEvent.objects.get(event_id=event_id), False
    return stored, True
