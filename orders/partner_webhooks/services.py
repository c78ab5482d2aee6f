"""Writes of partner webhooks: endpoints and their secrets, emitting events, delivering, replay.

Emitting is part of the change that causes the event: the message and its deliveries are rows
written in the caller's transaction (an outbox), and the deliveries are handed to a worker
after the commit. A lost hand-over is picked up by the beat sweep (`deliveries_due`).

Delivering claims the row (its next attempt moved past the send's deadline) in a short
transaction, sends outside any transaction, and records the attempt and the outcome in
another. Retried: network errors, 5xx, 408 and 429, with backoff (marketplace.backoff) for
PARTNER_WEBHOOK_RETRY_HOURS from the first try; any other answer is final. An endpoint that
has failed without a success for PARTNER_WEBHOOK_DISABLE_AFTER_HOURS is disabled (audited,
shown in the admin) until someone enables it again.
"""

import json
import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.services import audit_append
from catalog.models import Partner
from marketplace.actors import Actor
from marketplace.backoff import Backoff
from orders.partner_webhooks import signing, transport
from orders.partner_webhooks.exceptions import WebhookEndpointInvalid, WebhookReplayRefused
from orders.partner_webhooks.models import (
    DeliveryStatus,
    PartnerEvent,
    PartnerWebhookAttempt,
    PartnerWebhookDelivery,
    PartnerWebhookEndpoint,
    PartnerWebhookMessage,
)

logger = logging.getLogger(__name__)

WEBHOOK_SENDER = Actor.service("partner-webhooks")
RETRYABLE_STATUSES = frozenset({408, 429})
# Slack added to a claim beyond the send's own deadline, so a claim outlives its send.
CLAIM_SLACK_SECONDS = 30


def _backoff() -> Backoff:
    return Backoff(
        base=settings.PARTNER_WEBHOOK_RETRY_BASE_SECONDS,
        cap=settings.PARTNER_WEBHOOK_RETRY_CAP_SECONDS,
    )


# --- Endpoints ---------------------------------------------------------------------------------


def _events_clean(events: Iterable[str]) -> list[str]:
    events = list(dict.fromkeys(events))
    unknown = [event for event in events if event not in PartnerEvent.values]
    if unknown or not events:
        detail = (
            f"Unknown event types: {', '.join(map(str, unknown))}."
            if unknown
            else "Choose at least one event."
        )
        raise WebhookEndpointInvalid(detail, errors={"events": [detail]})
    return sorted(events)


def _url_clean(url: str) -> str:
    url = (url or "").strip()
    if len(url) > 2000:
        raise WebhookEndpointInvalid("The URL is longer than 2000 characters.")
    try:
        transport.endpoint_url_check(url)
    except transport.EndpointRefused as exc:
        raise WebhookEndpointInvalid(str(exc), errors={"url": [str(exc)]}) from None
    return url


@transaction.atomic
def endpoint_create(
    *, actor: Actor, partner: Partner, url: str, events: Iterable[str], description: str = ""
) -> tuple[PartnerWebhookEndpoint, str]:
    """Registers an endpoint; answers it and its secret, which is not shown again. Refuses
    (WebhookEndpointInvalid, nothing written) a URL that is not https, does not resolve or
    resolves to an address that is not public, and unknown event types."""
    url = _url_clean(url)
    events = _events_clean(events)
    endpoint = PartnerWebhookEndpoint(
        partner=partner, url=url, events=events, description=description[:200]
    )
    secret = signing.secret_generate()
    endpoint.secret_sealed = signing.secret_seal(secret, endpoint_id=endpoint.id)
    endpoint.save()
    audit_append(
        actor=actor,
        action="partner_webhook.endpoint_created",
        subject=endpoint,
        data={"partner": partner.slug, "url": url, "events": events},
    )
    return endpoint, secret


@transaction.atomic
def endpoint_update(
    *,
    actor: Actor,
    endpoint: PartnerWebhookEndpoint,
    url: str,
    events: Iterable[str],
    description: str = "",
) -> PartnerWebhookEndpoint:
    url = _url_clean(url)
    events = _events_clean(events)
    endpoint = PartnerWebhookEndpoint.objects.select_for_update().get(pk=endpoint.pk)
    before = {"url": endpoint.url, "events": endpoint.events}
    endpoint.url, endpoint.events, endpoint.description = url, events, description[:200]
    endpoint.save(update_fields=["url", "events", "description"])
    audit_append(
        actor=actor,
        action="partner_webhook.endpoint_changed",
        subject=endpoint,
        data={"from": before, "to": {"url": url, "events": events}},
    )
    return endpoint


@transaction.atomic
def endpoint_secret_rotate(*, actor: Actor, endpoint: PartnerWebhookEndpoint) -> str:
    """Makes a new secret and answers it (shown once). The old one goes on signing beside it
    for PARTNER_WEBHOOK_SECRET_OVERLAP_HOURS, so the partner can switch without losing a
    message."""
    endpoint = PartnerWebhookEndpoint.objects.select_for_update().get(pk=endpoint.pk)
    now = timezone.now()
    old = signing.secret_unseal(endpoint.secret_sealed, endpoint_id=endpoint.id)
    secret = signing.secret_generate()
    endpoint.previous_secret_sealed = signing.secret_seal(
        old, endpoint_id=endpoint.id, slot=signing.PREVIOUS
    )
    expires = now + timedelta(hours=settings.PARTNER_WEBHOOK_SECRET_OVERLAP_HOURS)
    endpoint.previous_secret_expires_at = expires
    endpoint.secret_sealed = signing.secret_seal(secret, endpoint_id=endpoint.id)
    endpoint.secret_rotated_at = now
    endpoint.save(
        update_fields=[
            "secret_sealed",
            "previous_secret_sealed",
            "previous_secret_expires_at",
            "secret_rotated_at",
        ]
    )
    audit_append(
        actor=actor,
        action="partner_webhook.secret_rotated",
        subject=endpoint,
        data={"previous_valid_until": expires.isoformat()},
    )
    return secret


def endpoint_secrets_in_use(endpoint: PartnerWebhookEndpoint, now: datetime) -> list[str]:
    """The secrets that sign now: the current one, and the previous during its overlap."""
    found = [signing.secret_unseal(endpoint.secret_sealed, endpoint_id=endpoint.id)]
    if endpoint.previous_secret_valid_at(now):
        found.append(
            signing.secret_unseal(
                endpoint.previous_secret_sealed, endpoint_id=endpoint.id, slot=signing.PREVIOUS
            )
        )
    return found


@transaction.atomic
def endpoint_enable(*, actor: Actor, endpoint: PartnerWebhookEndpoint) -> PartnerWebhookEndpoint:
    endpoint = PartnerWebhookEndpoint.objects.select_for_update().get(pk=endpoint.pk)
    if endpoint.disabled_at is None:
        return endpoint
    endpoint.disabled_at, endpoint.disabled_reason, endpoint.failing_since = None, "", None
    endpoint.save(update_fields=["disabled_at", "disabled_reason", "failing_since"])
    audit_append(actor=actor, action="partner_webhook.endpoint_enabled", subject=endpoint)
    return endpoint


def _endpoint_disable(endpoint: PartnerWebhookEndpoint, *, actor: Actor, reason: str) -> None:
    """Caller holds the endpoint's row lock."""
    endpoint.disabled_at = timezone.now()
    endpoint.disabled_reason = reason[:300]
    endpoint.save(update_fields=["disabled_at", "disabled_reason"])
    audit_append(
        actor=actor,
        action="partner_webhook.endpoint_disabled",
        subject=endpoint,
        data={"reason": endpoint.disabled_reason},
    )


@transaction.atomic
def endpoint_disable(*, actor: Actor, endpoint: PartnerWebhookEndpoint, reason: str) -> None:
    endpoint = PartnerWebhookEndpoint.objects.select_for_update().get(pk=endpoint.pk)
    if endpoint.disabled_at is None:
        _endpoint_disable(endpoint, actor=actor, reason=reason or "disabled by staff")


# --- Emitting ----------------------------------------------------------------------------------


def event_emit(
    *, event_type: str, partners: Iterable[Partner], dedupe_key: str, data: dict[str, Any]
) -> list[PartnerWebhookMessage]:
    """Stores one message per partner (once per `dedupe_key`) and a delivery for each of the
    partner's enabled endpoints that subscribed to `event_type`; hands the deliveries to a
    worker after the commit. Precondition: inside the transaction of the change it reports.
    Answers the new messages."""
    from orders.partner_webhooks import tasks  # the task module imports this one

    if event_type not in PartnerEvent.values:
        raise ValueError(f"{event_type} is not a partner event")
    now = timezone.now()
    made: list[PartnerWebhookMessage] = []
    deliveries: list[int] = []
    # One query, whatever the partners (a QuerySet of them is a subquery): a change whose
    # partners registered nothing costs no more than this.
    by_partner: dict[int, list[PartnerWebhookEndpoint]] = {}
    for endpoint in (
        PartnerWebhookEndpoint.objects.enabled()
        .filter(partner__in=partners)
        .select_related("partner")
        .order_by("partner_id", "created_at")
    ):
        if endpoint.wants(event_type):
            by_partner.setdefault(endpoint.partner_id, []).append(endpoint)
    for endpoints in by_partner.values():
        partner = endpoints[0].partner
        message = PartnerWebhookMessage(
            partner=partner,
            event_type=event_type,
            dedupe_key=dedupe_key,
            created_at=now,
        )
        message.payload = {"type": event_type, "timestamp": now.isoformat(), "data": data}
        try:
            with transaction.atomic():  # a savepoint: the same change emitted again is one
                message.save()
        except IntegrityError:
            continue
        made.append(message)
        for endpoint in endpoints:
            delivery = PartnerWebhookDelivery.objects.create(
                message=message, endpoint=endpoint, next_attempt_at=now, retry_window_from=now
            )
            deliveries.append(delivery.pk)
    if deliveries:
        transaction.on_commit(lambda: _enqueue(tasks, deliveries), robust=True)
    return made


def _enqueue(tasks: Any, delivery_pks: list[int], *, replay: bool = False) -> None:
    for pk in delivery_pks:
        tasks.partner_webhook_deliver.delay(pk, replay)


# --- Delivering --------------------------------------------------------------------------------


def _claim(delivery_pk: int, *, replay: bool) -> PartnerWebhookDelivery | None:
    """Takes the delivery for one send, or None when there is nothing to send (done, not due,
    another worker has it)."""
    now = timezone.now()
    with transaction.atomic():
        delivery = (
            PartnerWebhookDelivery.objects.select_for_update(of=("self",))
            .select_related("message", "endpoint")
            .filter(pk=delivery_pk)
            .first()
        )
        if delivery is None:
            return None
        if delivery.status not in (DeliveryStatus.PENDING, DeliveryStatus.RETRYING):
            return None
        if delivery.next_attempt_at > now and not replay:
            return None
        if not delivery.endpoint.is_enabled:
            delivery.status = DeliveryStatus.FAILED
            delivery.last_error = "the endpoint is disabled"
            delivery.save(update_fields=["status", "last_error"])
            return None
        lease = settings.PARTNER_WEBHOOK_TIMEOUT_SECONDS + CLAIM_SLACK_SECONDS
        delivery.attempts += 1
        delivery.next_attempt_at = now + timedelta(seconds=lease)
        delivery.save(update_fields=["attempts", "next_attempt_at"])
    return delivery


def _retryable(answer: transport.Answer) -> bool:
    if answer.status is None:
        return not answer.refused
    return answer.status >= 500 or answer.status in RETRYABLE_STATUSES


def delivery_send(*, delivery_pk: int, replay: bool = False) -> str:
    """One attempt at a delivery (the task's work); answers the delivery's status after it.
    Safe to run twice: a delivery that is done, or not due, is left alone."""
    delivery = _claim(delivery_pk, replay=replay)
    if delivery is None:
        return "nothing to send"
    message, endpoint = delivery.message, delivery.endpoint
    started = timezone.now()
    body = json.dumps(message.payload, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    headers = {
        "webhook-id": message.webhook_id,
        "webhook-timestamp": str(int(started.timestamp())),
        "webhook-signature": signing.signature_header(
            secrets_in_use=endpoint_secrets_in_use(endpoint, started),
            webhook_id=message.webhook_id,
            timestamp=started,
            body=body,
        ),
    }
    answer = transport.post(endpoint.url, body=body.encode(), headers=headers)
    return _record(delivery, answer, started=started, replay=replay)


@transaction.atomic
def _record(
    delivery: PartnerWebhookDelivery, answer: transport.Answer, *, started: datetime, replay: bool
) -> str:
    now = timezone.now()
    succeeded = answer.status is not None and 200 <= answer.status < 300
    retryable = not succeeded and _retryable(answer)
    error = answer.error or ("" if succeeded else f"HTTP {answer.status}: {answer.body}")
    # What an endpoint answers may hold NUL, which PostgreSQL's text refuses.
    error = error.replace("\x00", "\ufffd")
    PartnerWebhookAttempt.objects.create(
        delivery=delivery,
        number=delivery.attempts,
        started_at=started,
        latency_ms=answer.latency_ms,
        response_status=answer.status,
        succeeded=succeeded,
        retryable=retryable,
        error=error[:500],
        replay=replay,
    )
    endpoint = PartnerWebhookEndpoint.objects.select_for_update().get(pk=delivery.endpoint_id)
    if succeeded:
        delivery.status, delivery.delivered_at, delivery.last_error = (
            DeliveryStatus.SUCCEEDED,
            now,
            "",
        )
        delivery.next_attempt_at = now
        if endpoint.failing_since is not None:
            endpoint.failing_since = None
            endpoint.save(update_fields=["failing_since"])
    else:
        delivery.last_error = error[:500]
        next_at = now + _backoff().delay(delivery.attempts)
        window_end = delivery.retry_window_from + timedelta(
            hours=settings.PARTNER_WEBHOOK_RETRY_HOURS
        )
        if retryable and next_at <= window_end:
            delivery.status, delivery.next_attempt_at = DeliveryStatus.RETRYING, next_at
        else:
            delivery.status, delivery.next_attempt_at = DeliveryStatus.FAILED, now
        if endpoint.failing_since is None:
            endpoint.failing_since = now
            endpoint.save(update_fields=["failing_since"])
        disable_after = timedelta(hours=settings.PARTNER_WEBHOOK_DISABLE_AFTER_HOURS)
        if endpoint.is_enabled and now - endpoint.failing_since >= disable_after:
            _endpoint_disable(
                endpoint,
                actor=WEBHOOK_SENDER,
                reason=f"no successful delivery since {endpoint.failing_since.isoformat()}",
            )
    delivery.save(update_fields=["status", "next_attempt_at", "last_error", "delivered_at"])
    return delivery.status


def deliveries_due(limit: int = 500) -> list[int]:
    """Deliveries whose next attempt is due (a retry, a lost hand-over, a claim whose worker
    died), oldest first."""
    return list(
        PartnerWebhookDelivery.objects.due(timezone.now())
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:limit]
    )


# --- Replay ------------------------------------------------------------------------------------


@transaction.atomic
def messages_replay(*, actor: Actor, messages: Iterable[PartnerWebhookMessage]) -> int:
    """Sends the messages again, with the same webhook-id, to each of their endpoints that is
    enabled, whatever their deliveries' outcome; the retry window starts afresh. Answers how
    many deliveries were queued. WebhookReplayRefused when none can be (every endpoint is
    disabled: enable it first)."""
    from orders.partner_webhooks import tasks  # the task module imports this one

    message_ids = [message.pk for message in messages]
    now = timezone.now()
    deliveries = list(
        PartnerWebhookDelivery.objects.select_for_update(of=("self",))
        .filter(message_id__in=message_ids, endpoint__disabled_at__isnull=True)
        .order_by("pk")
    )
    if not deliveries:
        raise WebhookReplayRefused(
            "None of these messages has an enabled endpoint to send to: enable the endpoint first."
        )
    for delivery in deliveries:
        delivery.status = DeliveryStatus.PENDING
        delivery.next_attempt_at = now
        delivery.retry_window_from = now
    PartnerWebhookDelivery.objects.bulk_update(
        deliveries, ["status", "next_attempt_at", "retry_window_from"]
    )
    for message_id in sorted({d.message_id for d in deliveries}):
        audit_append(
            actor=actor,
            action="partner_webhook.message_replayed",
            subject=("partnerwebhookmessage", message_id),
            data={"deliveries": sum(1 for d in deliveries if d.message_id == message_id)},
        )
    pks = [d.pk for d in deliveries]
    transaction.on_commit(lambda: _enqueue(tasks, pks, replay=True), robust=True)
    return len(pks)
