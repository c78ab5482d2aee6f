import hashlib
import secrets
import uuid
from datetime import datetime

from django.contrib.auth.base_user import AbstractBaseUser, BaseUserManager
from django.contrib.auth.models import PermissionsMixin
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone


class UserManager(BaseUserManager["User"]):
    use_in_migrations = True

    def create_user(self, email: str, password: str | None = None, **extra: object) -> "User":
        if not email:
            raise ValueError("A user needs an email address.")
        user = self.model(email=self.normalize_email(email).lower(), **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_superuser(self, email: str, password: str | None = None, **extra: object) -> "User":
        extra.setdefault("is_staff", True)
        extra.setdefault("is_superuser", True)
        return self.create_user(email, password, **extra)


class User(AbstractBaseUser, PermissionsMixin):
    """A buyer or a staff member; staff roles are groups (see marketplace.roles)."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    email = models.EmailField(unique=True)
    display_name = models.CharField(max_length=150, blank=True)
    is_staff = models.BooleanField(
        default=False, help_text="Can sign in to the admin. Buyers are never staff."
    )
    is_active = models.BooleanField(default=True)
    date_joined = models.DateTimeField(default=timezone.now)

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []

    class Meta:
        constraints = [
            models.UniqueConstraint(Lower("email"), name="user_email_ci_unique"),
        ]

    def __str__(self) -> str:
        return self.email


class ApiToken(models.Model):
    """A bearer token for the API. Only its SHA-256 digest is stored; the token is shown once."""

    PREFIX = "mkp_"

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, blank=True)
    digest = models.CharField(max_length=64, unique=True, editable=False)
    hint = models.CharField(
        max_length=12, editable=False, help_text="The token's first characters, to tell it apart."
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.hint}… ({self.user})"

    @classmethod
    def generate(cls) -> str:
        return cls.PREFIX + secrets.token_urlsafe(32)

    @staticmethod
    def digest_of(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    def is_usable_at(self, moment: datetime) -> bool:
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or self.expires_at > moment


class SigningKeyPurpose(models.TextChoices):
    AUDIT = "audit", "Audit checkpoints and export digests"
    LICENSE = "license", "Licenses and delivery proofs"


class SigningKeyStatus(models.TextChoices):
    # Active keys sign; retired keys still verify what they signed; revoked keys verify nothing.
    ACTIVE = "active", "Active"
    RETIRED = "retired", "Retired"
    REVOKED = "revoked", "Revoked"


class SigningKeyBackend(models.TextChoices):
    # Where the private key lives (marketplace.keystore): sealed in this table, in AWS KMS, or
    # behind the signing proxy.
    LOCAL = "local", "Local (sealed in the database)"
    KMS = "kms", "AWS KMS"
    PROXY = "proxy", "Signing proxy"


class SigningKeyQuerySet(models.QuerySet["SigningKey"]):
    def verifying(self) -> "SigningKeyQuerySet":
        return self.exclude(status=SigningKeyStatus.REVOKED)


class SigningKey(models.Model):
    """A key the platform signs with. The local key store keeps the private key here, sealed
    with AES-256-GCM under the key-store master key; other backends keep only a reference
    (`backend_key_id`). Every backend's public key is kept here, so verifying and publishing
    never call out."""

    kid = models.CharField("key id", max_length=64, unique=True, editable=False)
    purpose = models.CharField(max_length=16, choices=SigningKeyPurpose.choices)
    algorithm = models.CharField(
        max_length=16, editable=False, help_text="JOSE name: EdDSA or ES256."
    )
    backend = models.CharField(
        max_length=16,
        choices=SigningKeyBackend.choices,
        default=SigningKeyBackend.LOCAL,
        editable=False,
    )
    backend_key_id = models.CharField(
        "key id in the backend",
        max_length=255,
        blank=True,
        default="",
        editable=False,
        help_text="The KMS key ARN or the signing proxy's key reference; empty for local keys.",
    )
    status = models.CharField(
        max_length=16, choices=SigningKeyStatus.choices, default=SigningKeyStatus.ACTIVE
    )
    public_key = models.BinaryField(editable=False, help_text="SubjectPublicKeyInfo, DER.")
    private_key_sealed = models.BinaryField(editable=False, blank=True, default=b"")
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    retired_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_reason = models.CharField(max_length=500, blank=True, editable=False)

    objects = SigningKeyQuerySet.as_manager()

    class Meta:
        ordering = ["purpose", "-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["purpose"],
                condition=models.Q(status="active"),
                name="signing_key_one_active_per_purpose",
            ),
            # One row per backend key: adopting the configured KMS key twice would give one
            # private key two kids, and revoking one would leave it signing under the other.
            models.UniqueConstraint(
                fields=["backend", "backend_key_id"],
                condition=~models.Q(backend_key_id=""),
                name="signing_key_backend_key_unique",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kid} ({self.purpose}, {self.status})"


class LedgerEntry(models.Model):
    """The ledger of the local Finance backend (marketplace.finance), the embedded default.
    With Finance configured this table stays empty: the ledger lives there."""

    idempotency_key = models.CharField(max_length=255, unique=True)
    reference = models.CharField(max_length=64, unique=True)
    order_id = models.UUIDField(db_index=True)
    kind = models.CharField(max_length=16)
    amount = models.BigIntegerField()
    currency = models.CharField(max_length=3)
    payload = models.JSONField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "ledger entries"
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return self.reference


class RuntimeSwitch(models.Model):
    """The platform's switches that staff turn at runtime, one row (pk 1). Maintenance mode is
    on when this says so or MAINTENANCE_MODE forces it (marketplace.maintenance); it is changed
    only through the audited service that a two-person approval applies
    (accounts.services.maintenance_switch_set)."""

    SINGLETON = 1

    id = models.PositiveSmallIntegerField(primary_key=True, default=SINGLETON, editable=False)
    maintenance = models.BooleanField(default=False)
    changed_at = models.DateTimeField(null=True, blank=True)
    # A user's uuid, as actors name them: this floor does not reach for the person.
    changed_by = models.UUIDField(null=True, blank=True)

    class Meta:
        verbose_name = "runtime switch"
        constraints = [
            models.CheckConstraint(condition=models.Q(id=1), name="runtime_switch_singleton"),
        ]

    def __str__(self) -> str:
        return f"maintenance {'on' if self.maintenance else 'off'}"
