"""Partner webhook endpoints, the messages sent to them, and every attempt.

A message is one event for one partner, with a stable `webhook-id` (`msg_<uuid>`) that every
attempt and every replay sends again, so a receiver can drop duplicates. A delivery is that
message on its way to one endpoint (the outbox row: status, attempts, next attempt, last
error); an attempt is one HTTP try at it, recorded whatever happened.
"""

import uuid
from datetime import datetime

from django.db import models
from django.db.models import Q
from django.utils import timezone

from catalog.models import Partner


class PartnerEvent(models.TextChoices):
    ORDER_PAID = "order.paid", "order.paid"
    ORDER_REFUNDED = "order.refunded", "order.refunded"
    ORDER_DISPUTED = "order.disputed", "order.disputed"
    PAYOUT_SENT = "payout.sent", "payout.sent"
    PAYOUT_PAID = "payout.paid", "payout.paid"
    SKU_ACTIVATED = "sku.activated", "sku.activated"
    SKU_SUSPENDED = "sku.suspended", "sku.suspended"
    MODERATION_DECIDED = "moderation.decided", "moderation.decided"


class PartnerWebhookEndpointQuerySet(models.QuerySet["PartnerWebhookEndpoint"]):
    def enabled(self) -> "PartnerWebhookEndpointQuerySet":
        return self.filter(disabled_at__isnull=True)


class PartnerWebhookEndpoint(models.Model):
    """A partner's HTTPS URL and the events it wants, with its own signing secret.

    The secret is kept only sealed (AES-256-GCM under the key-store master key,
    orders.partner_webhooks.signing) and shown once, when made or rotated. During a rotation's
    overlap the previous secret signs too (both `v1,` signatures in `webhook-signature`)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    partner = models.ForeignKey(Partner, on_delete=models.PROTECT, related_name="webhook_endpoints")
    url = models.URLField(max_length=2000, verbose_name="URL")
    events = models.JSONField(default=list, help_text="The event types sent to this endpoint.")
    description = models.CharField(max_length=200, blank=True)
    secret_sealed = models.BinaryField(editable=False)
    previous_secret_sealed = models.BinaryField(null=True, blank=True, editable=False)
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True, editable=False)
    secret_rotated_at = models.DateTimeField(default=timezone.now, editable=False)
    # Set by the first failure after a success, cleared by the next success: how long the
    # endpoint has been failing, which decides when it is disabled.
    failing_since = models.DateTimeField(null=True, blank=True, editable=False)
    disabled_at = models.DateTimeField(null=True, blank=True, editable=False)
    disabled_reason = models.CharField(max_length=300, blank=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    objects = PartnerWebhookEndpointQuerySet.as_manager()

    class Meta:
        ordering = ["partner", "created_at"]
        verbose_name = "partner webhook endpoint"

    def __str__(self) -> str:
        return f"{self.url} ({self.partner_id})"

    @property
    def is_enabled(self) -> bool:
        return self.disabled_at is None

    def wants(self, event_type: str) -> bool:
        return event_type in (self.events or [])

    def previous_secret_valid_at(self, now: datetime) -> bool:
        return bool(
            self.previous_secret_sealed
            and self.previous_secret_expires_at
            and now < self.previous_secret_expires_at
        )


class PartnerWebhookMessage(models.Model):
    """One event for one partner, as sent: the body is `payload` as canonical JSON (sorted
    keys), the same at every attempt and replay."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    partner = models.ForeignKey(Partner, on_delete=models.PROTECT, related_name="webhook_messages")
    event_type = models.CharField(max_length=40, choices=PartnerEvent.choices)
    # What makes an event once: the same change emitted twice (a replayed Stripe event) is one
    # message.
    dedupe_key = models.CharField(max_length=255)
    payload = models.JSONField()
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "partner webhook message"
        constraints = [
            models.UniqueConstraint(
                fields=["partner", "dedupe_key"], name="partner_webhook_message_once"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.webhook_id} {self.event_type}"

    @property
    def webhook_id(self) -> str:
        return f"msg_{self.id.hex}"


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Waiting to be sent"
    RETRYING = "retrying", "Failed, will be retried"
    SUCCEEDED = "succeeded", "Delivered (2xx)"
    FAILED = "failed", "Failed for good"


class PartnerWebhookDeliveryQuerySet(models.QuerySet["PartnerWebhookDelivery"]):
    def due(self, now: datetime) -> "PartnerWebhookDeliveryQuerySet":
        return self.filter(
            status__in=(DeliveryStatus.PENDING, DeliveryStatus.RETRYING),
            next_attempt_at__lte=now,
        )


class PartnerWebhookDelivery(models.Model):
    """A message on its way to one endpoint: the outbox row the task works from."""

    message = models.ForeignKey(
        PartnerWebhookMessage, on_delete=models.CASCADE, related_name="deliveries"
    )
    endpoint = models.ForeignKey(
        PartnerWebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries"
    )
    status = models.CharField(
        max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    last_error = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    # Retries stop PARTNER_WEBHOOK_RETRY_HOURS after this: the first try, or the last replay.
    retry_window_from = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)

    objects = PartnerWebhookDeliveryQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "partner webhook delivery"
        verbose_name_plural = "partner webhook deliveries"
        constraints = [
            models.UniqueConstraint(
                fields=["message", "endpoint"], name="partner_webhook_delivery_once"
            ),
        ]
        indexes = [
            models.Index(
                fields=["next_attempt_at"],
                condition=Q(status__in=["pending", "retrying"]),
                name="partner_webhook_due",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.message_id} → {self.endpoint_id} ({self.status})"


class PartnerWebhookAttempt(models.Model):
    """One HTTP try at a delivery: what the endpoint answered (or why nothing), and how long."""

    delivery = models.ForeignKey(
        PartnerWebhookDelivery, on_delete=models.CASCADE, related_name="attempt_log"
    )
    number = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    latency_ms = models.PositiveIntegerField()
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    succeeded = models.BooleanField()
    retryable = models.BooleanField()
    error = models.CharField(max_length=500, blank=True)
    replay = models.BooleanField(default=False, help_text="Started by a replay from the admin.")

    class Meta:
        ordering = ["delivery", "number"]
        verbose_name = "partner webhook attempt"

    def __str__(self) -> str:
        return f"{self.delivery_id} attempt {self.number}"
