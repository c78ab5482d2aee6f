"""Orders, the payments behind them, and the records that make them exactly-once: idempotency
keys, stored webhook events, Finance postings and royalty lines.

An order's status only moves forward (OrderStatus.rank): whatever order Stripe's events arrive
in, and however often, the status ends where the highest-ranked event puts it.
"""

import uuid
from datetime import datetime

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.utils import timezone

from catalog.models import Artifact, Partner, Sku


class OrderStatus(models.TextChoices):
    PENDING = "pending", "Awaiting payment"
    CANCELLED = "cancelled", "Cancelled (checkout expired)"
    PAYMENT_FAILED = "payment_failed", "Payment failed"
    PAID = "paid", "Paid"
    DISPUTED = "disputed", "Disputed"
    REFUNDED = "refunded", "Refunded"

    @classmethod
    def rank(cls, status: str) -> int:
        """Where a status sits on the only way an order moves. A failed async payment outranks
        an expiry, a payment outranks both (money was taken), a dispute outranks a payment, and
        a full refund ends everything: so any arrival order of the same events ends alike."""
        return _STATUS_RANK[status]


_STATUS_RANK = {
    OrderStatus.PENDING: 0,
    OrderStatus.CANCELLED: 1,
    OrderStatus.PAYMENT_FAILED: 2,
    OrderStatus.PAID: 3,
    OrderStatus.DISPUTED: 4,
    OrderStatus.REFUNDED: 5,
}

# Statuses in which the platform has received the buyer's money at some point.
MONEY_TAKEN = (OrderStatus.PAID, OrderStatus.DISPUTED, OrderStatus.REFUNDED)
# Statuses that take back what was delivered: licenses stop verifying, packages are gone.
REVOKING = (OrderStatus.DISPUTED, OrderStatus.REFUNDED)


class DeliveryHold(models.TextChoices):
    NONE = "", "Not held"
    DISPUTED = "disputed", "Held: payment disputed"
    MANUAL = "manual", "Held by staff"


class OrderQuerySet(models.QuerySet["Order"]):
    def for_buyer(self, buyer: object) -> "OrderQuerySet":
        return self.filter(buyer=buyer)

    def money_taken(self) -> "OrderQuerySet":
        return self.filter(status__in=MONEY_TAKEN)

    def deliverable(self) -> "OrderQuerySet":
        return self.filter(
            status=OrderStatus.PAID, finance_pending=False, delivery_hold=DeliveryHold.NONE
        )


class Order(models.Model):
    """One purchase of one SKU by one buyer, with the SKU as it was sold (the snapshot)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    buyer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="orders"
    )
    sku = models.ForeignKey(Sku, on_delete=models.PROTECT, related_name="orders")
    # The snapshot: what the buyer was shown and charged, whatever the SKU becomes later.
    sku_slug = models.SlugField(max_length=100)
    sku_title = models.CharField(max_length=200)
    sku_version = models.CharField(max_length=50)
    seller_slug = models.SlugField(max_length=64, help_text="The SKU's partner when sold.")
    amount = models.BigIntegerField(help_text="In the currency's minor units.")
    currency = models.CharField(max_length=3)
    splits = models.JSONField(help_text='[{"partner": slug, "basis_points": n}, ...]')
    # What was sold is what is delivered and licensed, whatever the SKU becomes afterwards.
    artifact = models.ForeignKey(
        Artifact, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    license_duration_days = models.PositiveIntegerField(
        null=True, blank=True, help_text="Empty for a perpetual license."
    )
    license_seats = models.PositiveIntegerField(default=1)
    license_entitlements = models.JSONField(default=list, blank=True)

    status = models.CharField(
        max_length=16, choices=OrderStatus.choices, default=OrderStatus.PENDING
    )
    status_changed_at = models.DateTimeField(default=timezone.now)
    gateway = models.CharField(max_length=16)
    checkout_session_id = models.CharField(max_length=255, unique=True)
    checkout_url = models.URLField(max_length=2000)
    payment_intent_id = models.CharField(max_length=255, blank=True, db_index=True)
    amount_refunded = models.BigIntegerField(default=0)
    paid_at = models.DateTimeField(null=True, blank=True)

    # Delivery waits until Finance has the sale, and while a hold is on.
    finance_pending = models.BooleanField(
        default=False, help_text="Paid, but Finance has not acknowledged the ledger entry yet."
    )
    delivery_hold = models.CharField(
        max_length=16, choices=DeliveryHold.choices, default=DeliveryHold.NONE, blank=True
    )
    hold_reason = models.CharField(max_length=300, blank=True)

    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    objects = OrderQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["buyer", "-created_at", "-id"], name="order_buyer_recent"),
            models.Index(fields=["status", "-created_at"], name="order_status_recent"),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="order_amount_positive"),
            models.CheckConstraint(
                condition=Q(amount_refunded__gte=0) & Q(amount_refunded__lte=F("amount")),
                name="order_refund_within_amount",
            ),
            models.CheckConstraint(
                condition=Q(status__in=OrderStatus.values), name="order_status_known"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.id} ({self.sku_slug}, {self.status})"

    def can_become(self, status: str) -> bool:
        return OrderStatus.rank(status) > OrderStatus.rank(self.status)

    @property
    def delivery_state(self) -> str:
        """`released` when licensing may deliver; otherwise why not."""
        if self.status != OrderStatus.PAID:
            return "not_paid" if OrderStatus.rank(self.status) < 3 else self.status
        if self.delivery_hold:
            return self.delivery_hold
        if self.finance_pending:
            return "finance_pending"
        return "released"

    def is_deliverable(self) -> bool:
        return self.delivery_state == "released"


class IdempotencyKey(models.Model):
    """A buyer's `Idempotency-Key` for checkout, and the answer given to it.

    The row is claimed (inserted) before anything else happens, so the unique constraint
    decides which of several concurrent requests does the work; the others get 409 while it is
    in flight and its stored answer afterwards.
    """

    buyer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="idempotency_keys"
    )
    key = models.CharField(max_length=255)
    fingerprint = models.CharField(max_length=64, help_text="SHA-256 of the canonical request.")
    order_id = models.UUIDField(help_text="The order this request creates (or created).")
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    locked_until = models.DateTimeField(
        help_text="While the first request works; after it, a retry may take over."
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["buyer", "key"], name="idempotency_key_per_buyer"),
        ]
        indexes = [models.Index(fields=["created_at"], name="idempotency_key_age")]

    def __str__(self) -> str:
        return self.key

    @property
    def is_complete(self) -> bool:
        return self.response_status is not None

    def is_expired_at(self, now: datetime) -> bool:
        return now - self.created_at > settings.CHECKOUT_IDEMPOTENCY_TTL


class WebhookStatus(models.TextChoices):
    RECEIVED = "received", "Received, not processed yet"
    PROCESSED = "processed", "Processed"
    IGNORED = "ignored", "Recorded and ignored"
    FAILED = "failed", "Failed, will be retried"
    DEAD = "dead", "Dead-lettered"
    REJECTED = "rejected", "Rejected (unreadable body)"


class WebhookEventQuerySet(models.QuerySet["WebhookEvent"]):
    def due(self, now: datetime) -> "WebhookEventQuerySet":
        return self.filter(status=WebhookStatus.FAILED, next_attempt_at__lte=now)

    def stranded(self, before: datetime) -> "WebhookEventQuerySet":
        """Stored but never processed: the hand-over after the commit was lost (a broker
        outage, a dispatch that died), whether or not a dispatch marked it."""
        return self.filter(status=WebhookStatus.RECEIVED, received_at__lt=before)

    def undispatched(self) -> "WebhookEventQuerySet":
        """Stored, and not handed to a worker by a dispatch yet."""
        return self.filter(status=WebhookStatus.RECEIVED, dispatched_at__isnull=True)


class WebhookEvent(models.Model):
    """A payment-provider event as received, stored once by its id before it is processed."""

    event_id = models.CharField(max_length=255, unique=True, null=True, blank=True)
    type = models.CharField(max_length=100, blank=True, db_index=True)
    livemode = models.BooleanField(default=False)
    payload = models.JSONField(null=True, blank=True)
    raw_body = models.TextField(
        blank=True, help_text="Kept only when the body could not be read as an event."
    )
    status = models.CharField(
        max_length=16, choices=WebhookStatus.choices, default=WebhookStatus.RECEIVED
    )
    outcome = models.CharField(max_length=300, blank=True)
    order = models.ForeignKey(
        Order, on_delete=models.PROTECT, null=True, blank=True, related_name="webhook_events"
    )
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    received_at = models.DateTimeField(default=timezone.now, db_index=True)
    dispatched_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When a dispatch handed it to a worker (webhook_events_dispatch).",
    )
    processed_at = models.DateTimeField(null=True, blank=True)

    objects = WebhookEventQuerySet.as_manager()

    class Meta:
        ordering = ["-received_at", "-id"]
        indexes = [
            models.Index(
                fields=["next_attempt_at"],
                condition=Q(status="failed"),
                name="webhook_due",
            ),
            models.Index(
                fields=["received_at"],
                condition=Q(status="received"),
                name="webhook_unprocessed",
            ),
            models.Index(
                fields=["id"],
                condition=Q(status="received", dispatched_at__isnull=True),
                name="webhook_undispatched",
            ),
        ]

    def __str__(self) -> str:
        return self.event_id or f"unreadable #{self.pk}"

    @property
    def data_object(self) -> dict:
        return ((self.payload or {}).get("data") or {}).get("object") or {}


class WebhookAttempt(models.Model):
    """One try at processing an event, successful or not."""

    event = models.ForeignKey(WebhookEvent, on_delete=models.CASCADE, related_name="attempt_log")
    number = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(default=timezone.now)
    succeeded = models.BooleanField()
    detail = models.TextField(blank=True)

    class Meta:
        ordering = ["event", "number"]

    def __str__(self) -> str:
        return f"{self.event} attempt {self.number}"


class RoyaltyLine(models.Model):
    """A partner's share of a paid order, in minor units. An order's lines sum to its amount."""

    order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="royalty_lines")
    partner = models.ForeignKey(Partner, on_delete=models.PROTECT, related_name="royalty_lines")
    basis_points = models.PositiveIntegerField()
    amount = models.BigIntegerField()
    currency = models.CharField(max_length=3)
    receives_remainder = models.BooleanField(
        default=False, help_text="Also got the minor units left over by rounding down."
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["order", "partner"], name="royalty_line_per_partner"),
            models.CheckConstraint(condition=Q(amount__gte=0), name="royalty_line_not_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.partner_id}: {self.amount} {self.currency}"


class PostingKind(models.TextChoices):
    SALE = "sale", "Sale"
    REFUND = "refund", "Refund"


class PostingStatus(models.TextChoices):
    PENDING = "pending", "Waiting for Finance"
    POSTED = "posted", "Acknowledged by Finance"
    REJECTED = "rejected", "Rejected by Finance"


class FinancePostingQuerySet(models.QuerySet["FinancePosting"]):
    def due(self, now: datetime) -> "FinancePostingQuerySet":
        return self.filter(status=PostingStatus.PENDING, next_attempt_at__lte=now)


class FinancePosting(models.Model):
    """A ledger entry on its way to Finance (an outbox row): stored in the transaction that
    makes it due, sent after, replayed until Finance acknowledges it."""

    order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="finance_postings")
    kind = models.CharField(max_length=16, choices=PostingKind.choices)
    idempotency_key = models.CharField(
        max_length=255, unique=True, help_text="Finance's key: the order id for a sale."
    )
    amount = models.BigIntegerField(help_text="Signed: a refund is negative.")
    currency = models.CharField(max_length=3)
    payload = models.JSONField()
    status = models.CharField(
        max_length=16, choices=PostingStatus.choices, default=PostingStatus.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    last_error = models.TextField(blank=True)
    ledger_reference = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    posted_at = models.DateTimeField(null=True, blank=True)

    objects = FinancePostingQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(
                fields=["next_attempt_at"], condition=Q(status="pending"), name="posting_due"
            ),
        ]

    def __str__(self) -> str:
        return self.idempotency_key


class Refund(models.Model):
    """Money returned to the buyer, as the payment provider knows it."""

    order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="refunds")
    gateway_refund_id = models.CharField(max_length=255, unique=True)
    amount = models.BigIntegerField()
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=32)
    reason = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="refund_amount_positive"),
        ]

    def __str__(self) -> str:
        return self.gateway_refund_id


# Partner webhooks live in their own package (orders/partner_webhooks); imported here so
# Django registers them with the orders app.
from orders.partner_webhooks.models import (  # noqa: E402, F401
    PartnerWebhookAttempt,
    PartnerWebhookDelivery,
    PartnerWebhookEndpoint,
    PartnerWebhookMessage,
)
