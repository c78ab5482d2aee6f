"""Licenses, encrypted deliveries, their downloads and signed proofs.

A released order (orders.Order.is_deliverable) gets one active license and one current delivery;
reissuing a license or regenerating a delivery makes a new row that names the one it supersedes,
so the history stays whole.
"""

import uuid
from datetime import datetime

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from orders.models import Order


class LicenseStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    REVOKED = "revoked", "Revoked"


class License(models.Model):
    """A signed license: a human-typeable key and a compact JWS anyone can verify offline."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="licenses")
    license_key = models.CharField(max_length=40, unique=True)
    token = models.TextField(help_text="Compact JWS (EdDSA or ES256) with the kid in its header.")
    kid = models.CharField(max_length=64)
    status = models.CharField(
        max_length=16, choices=LicenseStatus.choices, default=LicenseStatus.ACTIVE
    )
    entitlements = models.JSONField(default=list)
    seats = models.PositiveIntegerField(default=1)
    issued_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Empty: perpetual.")
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_reason = models.CharField(max_length=300, blank=True)
    supersedes = models.OneToOneField(
        "self", on_delete=models.PROTECT, null=True, blank=True, related_name="superseded_by"
    )

    class Meta:
        ordering = ["-issued_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["order"], condition=Q(status="active"), name="license_one_active_per_order"
            ),
        ]

    def __str__(self) -> str:
        return self.license_key

    def is_valid_at(self, moment: datetime) -> bool:
        return self.status == LicenseStatus.ACTIVE and (
            self.expires_at is None or moment < self.expires_at
        )


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Waiting to be packaged"
    READY = "ready", "Ready to download"
    SUSPENDED = "suspended", "Suspended (packaging failed)"
    SUPERSEDED = "superseded", "Superseded by a newer package"
    WITHDRAWN = "withdrawn", "Withdrawn (order refunded or disputed)"


CURRENT_DELIVERY = ("pending", "ready", "suspended")


class Delivery(models.Model):
    """An order's artifact, encrypted under a data key of its own, in the delivery storage.

    The data key is generated and stored wrapped (by KMS or the local master key) before the
    package is written, so a retry after a crash writes the same package under the same name:
    one delivery, however often the task runs.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="deliveries")
    status = models.CharField(
        max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    attempted_at = models.DateTimeField(null=True, blank=True)
    # Moved every few seconds by the attempt that is streaming the package: a stale one means
    # its worker died, and the fulfilment sweep takes the delivery over.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    format = models.CharField(max_length=32, blank=True)
    storage_name = models.CharField(max_length=512, blank=True)
    artifact_sha256 = models.CharField(max_length=64, blank=True)
    package_sha256 = models.CharField(max_length=64, blank=True)
    package_size = models.PositiveBigIntegerField(null=True, blank=True)
    wrapped_key = models.BinaryField(blank=True, default=b"", editable=False)
    key_wrapping = models.CharField(
        max_length=300, blank=True, help_text="`kms:<key id>` or `local`: what unwraps the key."
    )
    downloads = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    ready_at = models.DateTimeField(null=True, blank=True)
    supersedes = models.OneToOneField(
        "self", on_delete=models.PROTECT, null=True, blank=True, related_name="superseded_by"
    )

    class Meta:
        verbose_name_plural = "deliveries"
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["order"],
                condition=Q(status__in=CURRENT_DELIVERY),
                name="delivery_one_current_per_order",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.id} ({self.status})"


class DownloadKind(models.TextChoices):
    # On S3 the platform hands out presigned links and never sees the download itself.
    LINK = "link", "Link handed out (S3)"
    DOWNLOAD = "download", "Downloaded through the platform"


class DownloadLog(models.Model):
    """One download (or, for S3, one presigned link handed out), with who asked."""

    delivery = models.ForeignKey(Delivery, on_delete=models.PROTECT, related_name="download_log")
    at = models.DateTimeField(default=timezone.now)
    ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=500, blank=True)
    kind = models.CharField(max_length=16, choices=DownloadKind.choices)

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self) -> str:
        return f"{self.delivery_id} {self.kind} {self.at:%Y-%m-%d %H:%M:%S}"


class DownloadSession(models.Model):
    """One download link handed out, counted as one download however many requests and byte
    ranges it takes, until it expires.

    A platform link names its session in its token and is counted when its first GET serves
    package bytes (`counted_at`, set once by a conditional UPDATE, so concurrent requests count
    it once). A presigned S3 link cannot be watched, so its session is counted when it is
    handed out. Asking the API again while a session has at least half its lifetime left
    answers that session's link again, counted once.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    delivery = models.ForeignKey(
        Delivery, on_delete=models.PROTECT, related_name="download_sessions"
    )
    kind = models.CharField(max_length=16, choices=DownloadKind.choices)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    counted_at = models.DateTimeField(null=True, blank=True)
    requests = models.PositiveIntegerField(
        default=0, help_text="GET requests that served package bytes (platform links)."
    )
    bytes_served = models.PositiveBigIntegerField(default=0)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["delivery", "-expires_at"], name="download_session_open"),
        ]

    def __str__(self) -> str:
        return f"{self.delivery_id} {self.kind} until {self.expires_at:%Y-%m-%d %H:%M:%S}"

    def is_open_at(self, moment: datetime) -> bool:
        return moment < self.expires_at


class Proof(models.Model):
    """A signed statement binding an order, its SKU, the artifact and the package."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="proofs")
    delivery = models.OneToOneField(Delivery, on_delete=models.PROTECT, related_name="proof")
    payload = models.JSONField()
    fingerprint = models.CharField(max_length=64, unique=True)
    token = models.TextField(help_text="Compact JWS over the canonical payload.")
    signer_kid = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return str(self.id)


class BuyerDeliveryKey(models.Model):
    """A buyer's X25519 public key: their data keys are sealed to it instead of served."""

    buyer = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="delivery_key"
    )
    public_key = models.CharField(max_length=64, help_text="Raw 32 bytes, base64url.")
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.buyer_id}: {self.public_key[:12]}…"
