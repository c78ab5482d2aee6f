import base64
import hashlib
import uuid

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import F, Q
from django.utils import timezone

from catalog.search import SearchDocumentField, SkuSearchDocument
from marketplace.money import validate_currency
from marketplace.validation import ConstraintErrorsAtFields

BASIS_POINTS_TOTAL = 10_000
PREVIEW_TTL_MIN_SECONDS = 60
PREVIEW_TTL_MAX_SECONDS = 86_400


def validate_entitlements(value: object) -> None:
    if not isinstance(value, list) or not all(
        isinstance(item, str) and item.strip() for item in value
    ):
        raise ValidationError(
            'Entitlements are a JSON list of feature names, e.g. ["standard", "commercial"].',
            code="invalid_entitlements",
        )


class PartnerKind(models.TextChoices):
    PUBLISHER = "publisher", "Publisher"
    CREATOR = "creator", "Creator"


class PartnerQuerySet(models.QuerySet["Partner"]):
    def active(self) -> "PartnerQuerySet":
        return self.filter(is_active=True)


class Partner(ConstraintErrorsAtFields, models.Model):
    """A publisher or creator whose goods are sold and who is paid royalties."""

    slug = models.SlugField(
        max_length=64,
        unique=True,
        error_messages={"unique": "Another partner already has this slug; choose another."},
    )
    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=16, choices=PartnerKind.choices)
    legal_name = models.CharField(max_length=200, blank=True)
    contact_email = models.EmailField(blank=True)
    website = models.URLField(blank=True)
    description = models.TextField(blank=True)
    contract_reference = models.CharField(
        max_length=100, blank=True, help_text="The signed contract's id in the contracts system."
    )
    payout_reference = models.CharField(
        max_length=100, blank=True, help_text="The payee's id in Finance, where royalties go."
    )
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = PartnerQuerySet.as_manager()

    class Meta:
        ordering = ["slug"]
        constraints = [
            models.CheckConstraint(
                condition=Q(kind__in=PartnerKind.values),
                name="partner_kind_valid",
                violation_error_code="partner_kind_valid",
                violation_error_message="Choose whether the partner is a publisher or a creator.",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class KeyStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    REVOKED = "revoked", "Revoked"


class PartnerKeyQuerySet(models.QuerySet["PartnerKey"]):
    def active(self) -> "PartnerKeyQuerySet":
        return self.filter(status=KeyStatus.ACTIVE)


class PartnerKey(ConstraintErrorsAtFields, models.Model):
    """An Ed25519 public key with which a partner signs its manifests."""

    partner = models.ForeignKey(Partner, on_delete=models.PROTECT, related_name="keys")
    key_id = models.SlugField(
        max_length=64, help_text="The partner's name for the key, unique per partner."
    )
    algorithm = models.CharField(max_length=16, default="ed25519", editable=False)
    public_key = models.CharField(
        max_length=64, help_text="The raw 32-byte Ed25519 public key, base64."
    )
    fingerprint = models.CharField(
        max_length=64, unique=True, editable=False, help_text="SHA-256 of the raw public key."
    )
    status = models.CharField(max_length=16, choices=KeyStatus.choices, default=KeyStatus.ACTIVE)
    revoked_reason = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = PartnerKeyQuerySet.as_manager()

    class Meta:
        verbose_name = "partner signing key"
        ordering = ["partner_id", "key_id"]
        constraints = [
            models.UniqueConstraint(
                fields=["partner", "key_id"],
                name="partnerkey_id_unique",
                violation_error_code="partnerkey_id_unique",
                violation_error_message=(
                    "The partner already has a key with this id; give the new key another id."
                ),
            ),
            models.CheckConstraint(
                condition=Q(status__in=KeyStatus.values),
                name="partnerkey_status_valid",
                violation_error_code="partnerkey_status_valid",
                violation_error_message="A key is active or revoked.",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.partner.slug}/{self.key_id}"

    def raw_public_key(self) -> bytes:
        return base64.b64decode(self.public_key)

    @staticmethod
    def fingerprint_of(raw_public_key: bytes) -> str:
        return hashlib.sha256(raw_public_key).hexdigest()


class Category(ConstraintErrorsAtFields, models.Model):
    """A node of the category tree; `path` is the slugs from the root, kept by the services."""

    slug = models.SlugField(
        max_length=64,
        unique=True,
        error_messages={"unique": "Another category already has this slug; choose another."},
    )
    name = models.CharField(max_length=100)
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="children"
    )
    path = models.CharField(max_length=500, unique=True, editable=False)
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "categories"
        ordering = ["path"]
        constraints = [
            models.CheckConstraint(
                condition=Q(parent__isnull=True) | ~Q(parent=F("pk")),
                name="category_not_own_parent",
                violation_error_code="category_not_own_parent",
                violation_error_message=(
                    "A category cannot be placed under itself; choose another parent."
                ),
            ),
        ]

    def __str__(self) -> str:
        return self.path.strip("/").replace("/", " / ") if self.path else self.name


class SkuStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    ACTIVE = "active", "Active"
    SUSPENDED = "suspended", "Suspended"
    RETIRED = "retired", "Retired"


SKU_TRANSITIONS: dict[str, frozenset[str]] = {
    SkuStatus.DRAFT: frozenset({SkuStatus.ACTIVE, SkuStatus.RETIRED}),
    SkuStatus.ACTIVE: frozenset({SkuStatus.SUSPENDED, SkuStatus.RETIRED}),
    SkuStatus.SUSPENDED: frozenset({SkuStatus.ACTIVE, SkuStatus.RETIRED}),
    SkuStatus.RETIRED: frozenset(),
}


class ManifestStatus(models.TextChoices):
    MISSING = "missing", "No manifest"
    PENDING = "pending", "Not checked yet"
    VERIFIED = "verified", "Verified"
    # The partner's signature is good, but the manifest it signed is about other bytes than
    # the SKU's artifact: nothing the partner vouched for is on offer.
    MISMATCH = "mismatch", "Signature valid, names another artifact"
    REJECTED = "rejected", "Rejected"
    UNAVAILABLE = "unavailable", "Kernel unreachable"


class SkuQuerySet(models.QuerySet["Sku"]):
    def active(self) -> "SkuQuerySet":
        return self.filter(status=SkuStatus.ACTIVE)


class Sku(ConstraintErrorsAtFields, models.Model):
    """A thing for sale: one version of a partner's package, model or asset pack."""

    slug = models.SlugField(
        max_length=100,
        unique=True,
        error_messages={
            "unique": "Another SKU already has this slug; choose another (it is the public id)."
        },
    )
    title = models.CharField(max_length=200)
    summary = models.CharField(max_length=300, blank=True)
    description = models.TextField(blank=True)
    category = models.ForeignKey(Category, on_delete=models.PROTECT, related_name="skus")
    partner = models.ForeignKey(Partner, on_delete=models.PROTECT, related_name="skus")
    price_amount = models.BigIntegerField(help_text="In the currency's minor units (cents).")
    currency = models.CharField(
        max_length=3, validators=[validate_currency], help_text="ISO 4217 code, e.g. USD."
    )
    status = models.CharField(max_length=16, choices=SkuStatus.choices, default=SkuStatus.DRAFT)
    status_reason = models.CharField(max_length=300, blank=True)
    version = models.CharField(max_length=50)

    artifact = models.ForeignKey(
        "Artifact", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    manifest = models.JSONField(null=True, blank=True)
    manifest_signature = models.TextField(blank=True)
    manifest_status = models.CharField(
        max_length=16, choices=ManifestStatus.choices, default=ManifestStatus.MISSING
    )
    manifest_detail = models.TextField(blank=True)
    manifest_key_id = models.CharField(max_length=64, blank=True)
    manifest_checked_at = models.DateTimeField(null=True, blank=True)

    license_duration_days = models.PositiveIntegerField(
        null=True, blank=True, help_text="Empty for a perpetual license."
    )
    license_seats = models.PositiveIntegerField(default=1)
    license_entitlements = models.JSONField(
        default=list,
        blank=True,
        validators=[validate_entitlements],
        help_text='Feature names the license grants, e.g. ["pro"].',
    )
    license_terms_url = models.URLField(blank=True)

    preview_enabled = models.BooleanField(default=False)
    preview_ttl_seconds = models.PositiveIntegerField(
        default=900,
        help_text=(
            f"How long a preview session lasts, in seconds "
            f"({PREVIEW_TTL_MIN_SECONDS:,} to {PREVIEW_TTL_MAX_SECONDS:,})."
        ),
    )

    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)
    activated_at = models.DateTimeField(null=True, blank=True, editable=False)
    status_changed_at = models.DateTimeField(null=True, blank=True, editable=False)

    # What `q` searches (catalog.search): kept by the database from the title, summary and
    # slug, never written by the application.
    search_document = models.GeneratedField(
        expression=SkuSearchDocument(),
        output_field=SearchDocumentField(),
        db_persist=True,
    )

    objects = SkuQuerySet.as_manager()

    class Meta:
        verbose_name = "SKU"
        ordering = ["-created_at", "-id"]
        permissions = [("publish_sku", "Can activate, suspend and retire SKUs")]
        constraints = [
            models.CheckConstraint(
                condition=Q(price_amount__gt=0),
                name="sku_price_positive",
                violation_error_code="sku_price_positive",
                violation_error_message=(
                    "The price must be more than zero. Enter it in the currency's minor units: "
                    "1999 is 19.99 USD, 500 is 500 JPY."
                ),
            ),
            models.CheckConstraint(
                condition=Q(currency__regex=r"^[A-Z]{3}$"),
                name="sku_currency_iso4217",
                violation_error_code="sku_currency_iso4217",
                violation_error_message=(
                    "Enter the currency as its three-letter ISO 4217 code, e.g. USD."
                ),
            ),
            models.CheckConstraint(
                condition=Q(status__in=SkuStatus.values),
                name="sku_status_valid",
                violation_error_code="sku_status_valid",
                violation_error_message="A SKU is a draft, active, suspended or retired.",
            ),
            models.CheckConstraint(
                condition=Q(manifest_status__in=ManifestStatus.values),
                name="sku_manifest_status_valid",
                violation_error_code="sku_manifest_status_valid",
                violation_error_message="The manifest status is not one the catalog knows.",
            ),
            models.CheckConstraint(
                condition=Q(license_seats__gte=1),
                name="sku_seats_positive",
                violation_error_code="sku_seats_positive",
                violation_error_message="A license is for at least 1 seat; enter 1 or more.",
            ),
            models.CheckConstraint(
                condition=Q(
                    preview_ttl_seconds__gte=PREVIEW_TTL_MIN_SECONDS,
                    preview_ttl_seconds__lte=PREVIEW_TTL_MAX_SECONDS,
                ),
                name="sku_preview_ttl_range",
                violation_error_code="sku_preview_ttl_range",
                violation_error_message=(
                    f"A preview lasts {PREVIEW_TTL_MIN_SECONDS:,} to {PREVIEW_TTL_MAX_SECONDS:,} "
                    "seconds (1 minute to 24 hours); enter a number in that range."
                ),
            ),
            # Only a SKU with an artifact and a verified manifest can be on sale.
            models.CheckConstraint(
                condition=~Q(status=SkuStatus.ACTIVE)
                | Q(artifact__isnull=False, manifest_status=ManifestStatus.VERIFIED),
                name="sku_active_is_complete",
                violation_error_code="sku_active_is_complete",
                violation_error_message=(
                    "Only a SKU with an artifact and a verified manifest can be on sale."
                ),
            ),
        ]
        indexes = [
            models.Index(fields=["status", "-created_at"], name="sku_status_created"),
            models.Index(fields=["status", "price_amount"], name="sku_status_price"),
            models.Index(fields=["status", "title"], name="sku_status_title"),
            # A category's or a partner's SKUs on sale in the list's default order: a small
            # category reads its own rows, not the whole list's index. The search's GIN index
            # is made by SQL (catalog.search.SEARCH_INDEX): it exists on PostgreSQL only.
            models.Index(
                fields=["category", "-created_at", "-id"],
                name="sku_active_category_created",
                condition=Q(status=SkuStatus.ACTIVE),
            ),
            models.Index(
                fields=["partner", "-created_at", "-id"],
                name="sku_active_partner_created",
                condition=Q(status=SkuStatus.ACTIVE),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.title} ({self.slug})"

    def clean(self) -> None:
        # Django takes {} for an empty value and does not show it to the field's validator;
        # no entitlements are stored as the empty list the validator accepts.
        if not self.license_entitlements:
            self.license_entitlements = []

    def can_become(self, status: str) -> bool:
        return status in SKU_TRANSITIONS[self.status]

    def files_can_change(self) -> bool:
        """Whether the artifact and the manifest may change: only while the SKU is a draft or
        suspended, never while it is on sale."""
        return self.status in (SkuStatus.DRAFT, SkuStatus.SUSPENDED)

    def manifest_artifact_sha256(self) -> str | None:
        """The SHA-256 of the artifact the attached manifest names; None without a manifest."""
        if self.manifest is None:
            return None
        return self.manifest.get("artifact", {}).get("sha256")

    def manifest_names_another_artifact(self) -> bool:
        """Whether the attached manifest names other bytes than the SKU's artifact."""
        if self.manifest is None or self.artifact is None:
            return False
        return self.manifest_artifact_sha256() != self.artifact.sha256


class Artifact(ConstraintErrorsAtFields, models.Model):
    """One uploaded file of a SKU. Rows are never changed: a new upload makes a new row, so
    whatever refers to an artifact keeps referring to the same bytes."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    sku = models.ForeignKey(Sku, on_delete=models.PROTECT, related_name="artifacts")
    storage_key = models.CharField(max_length=512, unique=True)
    filename = models.CharField(max_length=255)
    content_type = models.CharField(max_length=100, blank=True)
    size = models.PositiveBigIntegerField()
    sha256 = models.CharField(max_length=64)
    uploaded_at = models.DateTimeField(default=timezone.now)
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    integrity_checked_at = models.DateTimeField(null=True, blank=True)
    integrity_ok = models.BooleanField(null=True)

    class Meta:
        ordering = ["-uploaded_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(sha256__regex=r"^[0-9a-f]{64}$"),
                name="artifact_sha256_hex",
                violation_error_code="artifact_sha256_hex",
                violation_error_message="A SHA-256 is 64 lowercase hexadecimal digits.",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.filename} ({self.sha256[:12]}…)"


class RoyaltySplit(ConstraintErrorsAtFields, models.Model):
    """A partner's share of a SKU's revenue, in basis points; a SKU's shares sum to 10,000."""

    sku = models.ForeignKey(Sku, on_delete=models.CASCADE, related_name="splits")
    partner = models.ForeignKey(Partner, on_delete=models.PROTECT, related_name="royalty_splits")
    basis_points = models.PositiveIntegerField(help_text="1 to 10,000; 10,000 is the whole price.")

    class Meta:
        ordering = ["sku_id", "-basis_points", "partner_id"]
        constraints = [
            models.UniqueConstraint(
                fields=["sku", "partner"],
                name="royaltysplit_unique_partner",
                violation_error_code="royaltysplit_unique_partner",
                violation_error_message="Each partner appears once in a SKU's royalty splits.",
            ),
            models.CheckConstraint(
                condition=Q(basis_points__gte=1, basis_points__lte=BASIS_POINTS_TOTAL),
                name="royaltysplit_bp_range",
                violation_error_code="royaltysplit_bp_range",
                violation_error_message=(
                    f"A share is 1 to {BASIS_POINTS_TOTAL:,} basis points; "
                    f"{BASIS_POINTS_TOTAL:,} is the whole price."
                ),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.partner.slug}: {self.basis_points / 100:.2f}%"


class ModerationSubject(models.TextChoices):
    ARTIFACT = "artifact", "Artifact"
    MANIFEST = "manifest", "Manifest"
    LISTING = "listing", "Listing (title, summary, description, version)"


class ModerationState(models.TextChoices):
    PASSED = "passed", "Passed"
    FLAGGED = "flagged", "Flagged: waits for a moderator"
    BLOCKED = "blocked", "Blocked"
    APPROVED = "approved", "Approved by a moderator"
    REJECTED = "rejected", "Rejected by a moderator"
    OVERRIDDEN = "overridden", "Overridden by a moderator"


# The states in which the reviewed content may go on sale.
MODERATION_CLEARED = frozenset(
    {ModerationState.PASSED, ModerationState.APPROVED, ModerationState.OVERRIDDEN}
)


class ModerationReviewQuerySet(models.QuerySet["ModerationReview"]):
    def waiting(self) -> "ModerationReviewQuerySet":
        return self.filter(state=ModerationState.FLAGGED)


class ModerationReview(ConstraintErrorsAtFields, models.Model):
    """The moderation verdict on one item of a SKU as it was: an artifact, a manifest or the
    listing's text, named by `fingerprint` (the artifact's SHA-256, or the SHA-256 of the
    canonical manifest or text). A change makes a new row; a moderator's decision changes the
    row's state once (catalog.services.moderation)."""

    sku = models.ForeignKey(Sku, on_delete=models.PROTECT, related_name="moderation_reviews")
    subject = models.CharField(max_length=16, choices=ModerationSubject.choices)
    fingerprint = models.CharField(max_length=64)
    artifact = models.ForeignKey(
        Artifact, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    sku_version = models.CharField(max_length=50)
    backend = models.CharField(max_length=16)
    outcome = models.CharField(max_length=8)  # the backend's: pass, flag or block
    reasons = models.JSONField(default=list, blank=True)  # [{"code", "outcome", "message"}]
    state = models.CharField(max_length=16, choices=ModerationState.choices)
    submitted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decision_reason = models.CharField(max_length=500, blank=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    objects = ModerationReviewQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(subject__in=ModerationSubject.values),
                name="moderationreview_subject_valid",
                violation_error_code="moderationreview_subject_valid",
                violation_error_message="A review is of an artifact, a manifest or a listing.",
            ),
            models.CheckConstraint(
                condition=Q(state__in=ModerationState.values),
                name="moderationreview_state_valid",
                violation_error_code="moderationreview_state_valid",
                violation_error_message="The review's state is not one moderation knows.",
            ),
            models.CheckConstraint(
                condition=Q(outcome__in=["pass", "flag", "block"]),
                name="moderationreview_outcome_valid",
                violation_error_code="moderationreview_outcome_valid",
                violation_error_message="An outcome is pass, flag or block.",
            ),
            # Nobody reviews their own upload, whatever path the write takes.
            models.CheckConstraint(
                condition=Q(decided_by__isnull=True)
                | Q(submitted_by__isnull=True)
                | ~Q(decided_by=F("submitted_by")),
                name="moderationreview_not_own",
                violation_error_code="moderationreview_not_own",
                violation_error_message="The uploader cannot review their own upload.",
            ),
            # One verdict per content: the same bytes or text again keep theirs.
            models.UniqueConstraint(
                fields=["sku", "subject", "fingerprint"],
                name="moderationreview_one_per_content",
                violation_error_code="moderationreview_one_per_content",
                violation_error_message="This content of the SKU already has a review.",
            ),
        ]
        indexes = [
            models.Index(
                fields=["created_at"],
                name="modreview_waiting",
                condition=Q(state="flagged"),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.sku.slug} {self.subject} {self.fingerprint[:12]}… ({self.state})"

    def is_cleared(self) -> bool:
        return self.state in MODERATION_CLEARED

    def reason_codes(self) -> list[str]:
        return [reason.get("code", "") for reason in self.reasons]
