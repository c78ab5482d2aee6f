"""Preview material (what a buyer may try of a SKU) and preview sessions (one buyer's try)."""

import uuid
from datetime import datetime

from django.conf import settings
from django.db import models
from django.db.models import Q

from catalog.models import Sku
from marketplace.validation import ConstraintErrorsAtFields


class MaterialKind(models.TextChoices):
    SAMPLE = "sample", "Sample (files a buyer may open)"
    SANDBOX = "sandbox", "Sandbox (files and a command that serves them over HTTP)"


class PreviewMaterial(ConstraintErrorsAtFields, models.Model):
    """One version of a SKU's preview material. Rows are never changed: a new upload is a new
    version, and the SKU's current material is its highest version that is not withdrawn."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    sku = models.ForeignKey(Sku, on_delete=models.PROTECT, related_name="preview_materials")
    version = models.PositiveIntegerField()
    kind = models.CharField(max_length=16, choices=MaterialKind.choices)
    # A sandbox's command, run in /preview, serving on the socket it inherits (PREVIEW_LISTEN_FD).
    command = models.JSONField(default=list, blank=True)
    # The file a sample opens with ("" lists the files).
    entry = models.CharField(max_length=500, blank=True)
    digest = models.CharField(
        max_length=64, help_text="SHA-256 of the sorted list of paths and their SHA-256."
    )
    size = models.PositiveBigIntegerField()
    file_count = models.PositiveIntegerField()
    note = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    withdrawn_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["sku_id", "-version"]
        constraints = [
            models.UniqueConstraint(
                fields=["sku", "version"],
                name="previewmaterial_version_unique",
                violation_error_code="previewmaterial_version_unique",
                violation_error_message="The SKU already has preview material of this version.",
            ),
            models.CheckConstraint(
                condition=Q(kind__in=MaterialKind.values),
                name="previewmaterial_kind_valid",
                violation_error_code="previewmaterial_kind_valid",
                violation_error_message="Preview material is a sample or a sandbox.",
            ),
            models.CheckConstraint(
                condition=Q(digest__regex=r"^[0-9a-f]{64}$"),
                name="previewmaterial_digest_hex",
                violation_error_code="previewmaterial_digest_hex",
                violation_error_message="A SHA-256 is 64 lowercase hexadecimal digits.",
            ),
            models.CheckConstraint(
                condition=Q(file_count__gte=1),
                name="previewmaterial_has_files",
                violation_error_code="previewmaterial_has_files",
                violation_error_message="Preview material has at least one file.",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.sku.slug} preview v{self.version} ({self.kind})"


class PreviewFile(models.Model):
    """One file of preview material, stored like an artifact and hashed."""

    material = models.ForeignKey(PreviewMaterial, on_delete=models.CASCADE, related_name="files")
    path = models.CharField(max_length=500)
    storage_key = models.CharField(max_length=600, unique=True)
    content_type = models.CharField(max_length=100)
    size = models.PositiveBigIntegerField()
    sha256 = models.CharField(max_length=64)

    class Meta:
        ordering = ["material_id", "path"]
        constraints = [
            models.UniqueConstraint(fields=["material", "path"], name="previewfile_path_unique"),
            models.CheckConstraint(
                condition=Q(sha256__regex=r"^[0-9a-f]{64}$"), name="previewfile_sha256_hex"
            ),
        ]

    def __str__(self) -> str:
        return self.path


class SessionStatus(models.TextChoices):
    REQUESTED = "requested", "Requested"
    STARTING = "starting", "Starting"
    READY = "ready", "Ready"
    ENDED = "ended", "Ended"
    TORN_DOWN = "torn_down", "Torn down"


OPEN_STATUSES = (SessionStatus.REQUESTED, SessionStatus.STARTING, SessionStatus.READY)


class EndReason(models.TextChoices):
    EXPIRED = "expired", "Expired"
    ENDED = "ended", "Ended by the buyer"
    REVOKED = "revoked", "Revoked"
    FAILED = "failed", "Failed"
    ROTATED = "rotated", "A newer material version replaced it"


class PreviewSessionQuerySet(models.QuerySet["PreviewSession"]):
    def open(self) -> "PreviewSessionQuerySet":
        return self.filter(status__in=OPEN_STATUSES)


class PreviewSession(ConstraintErrorsAtFields, models.Model):
    """One buyer's preview of one SKU, from the request to the sandbox's teardown.

    The token is never stored: `token_hash` is its SHA-256. `environment_id` names the sandbox
    (the local provisioner's marker, the Kubernetes namespace's suffix) before it is started, so
    what a crash mid-start leaves behind can be found and torn down.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    buyer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="preview_sessions"
    )
    sku = models.ForeignKey(Sku, on_delete=models.PROTECT, related_name="preview_sessions")
    material = models.ForeignKey(PreviewMaterial, on_delete=models.PROTECT, related_name="sessions")
    kind = models.CharField(max_length=16, choices=MaterialKind.choices)
    token_hash = models.CharField(max_length=64, unique=True)
    status = models.CharField(
        max_length=16, choices=SessionStatus.choices, default=SessionStatus.REQUESTED
    )
    end_reason = models.CharField(max_length=16, choices=EndReason.choices, blank=True)
    end_detail = models.CharField(max_length=500, blank=True)
    provisioner = models.CharField(max_length=32, blank=True)
    environment_id = models.CharField(max_length=64, unique=True)
    host = models.CharField(max_length=255, blank=True)
    endpoint = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    started_at = models.DateTimeField(null=True, blank=True)
    ready_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    torn_down_at = models.DateTimeField(null=True, blank=True)
    requests_served = models.PositiveBigIntegerField(default=0)
    bytes_served = models.PositiveBigIntegerField(default=0)

    objects = PreviewSessionQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=SessionStatus.values),
                name="previewsession_status_valid",
            ),
            models.CheckConstraint(
                condition=Q(end_reason="") | Q(end_reason__in=EndReason.values),
                name="previewsession_end_reason_valid",
            ),
            # An ended session says why; an open one has no reason yet.
            models.CheckConstraint(
                condition=(
                    Q(status__in=OPEN_STATUSES, end_reason="", ended_at__isnull=True)
                    | (
                        Q(status__in=(SessionStatus.ENDED, SessionStatus.TORN_DOWN))
                        & ~Q(end_reason="")
                        & Q(ended_at__isnull=False)
                    )
                ),
                name="previewsession_end_consistent",
            ),
            models.CheckConstraint(
                condition=Q(status=SessionStatus.TORN_DOWN) | Q(torn_down_at__isnull=True),
                name="previewsession_torn_down_dated",
            ),
            models.CheckConstraint(
                condition=Q(expires_at__gt=models.F("created_at")),
                name="previewsession_expires_after_created",
            ),
        ]
        indexes = [
            models.Index(
                fields=["expires_at"],
                name="previewsession_open_expiry",
                condition=Q(status__in=OPEN_STATUSES),
            ),
            models.Index(fields=["buyer", "-created_at"], name="previewsession_buyer_created"),
            models.Index(
                fields=["ended_at"],
                name="previewsession_to_tear_down",
                condition=Q(status=SessionStatus.ENDED),
            ),
        ]

    def __str__(self) -> str:
        return f"preview {self.id} of {self.sku_id}"

    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    def is_expired_at(self, at: datetime) -> bool:
        return self.expires_at <= at


class PreviewPause(models.Model):
    """New sessions are refused while a pause is in force: of one SKU, or of every SKU (no SKU).
    Made by "Isolate pool"; lifting it is a second, dated act."""

    sku = models.ForeignKey(
        Sku, null=True, blank=True, on_delete=models.PROTECT, related_name="preview_pauses"
    )
    reason = models.CharField(max_length=300)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    lifted_at = models.DateTimeField(null=True, blank=True)
    lifted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # At most one pause in force per SKU; the pool's (no SKU) is kept single by
            # previews.locks.preview_pool_lock, as a NULL is unique to a constraint.
            models.UniqueConstraint(
                fields=["sku"],
                condition=Q(lifted_at__isnull=True, sku__isnull=False),
                name="previewpause_one_per_sku",
            ),
        ]

    def __str__(self) -> str:
        scope = self.sku.slug if self.sku_id else "every SKU"
        return f"previews paused for {scope}"
