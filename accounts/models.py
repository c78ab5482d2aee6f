"""Who a person is at the company's identity provider, for the accounts signed in through it;
two-person approvals of sensitive changes; break-glass password logins.

The user tables themselves are the ground floor's (marketplace.User, ApiToken); this app keeps
what binds them to the provider and what staff ask, approve and are granted.
"""

import uuid
from datetime import datetime

from django.conf import settings
from django.db import models
from django.utils import timezone


class Identity(models.Model):
    """An account at the provider: (issuer, subject), never the e-mail address, names the person,
    so an e-mail changed at the provider follows the same user here and a new account that
    reuses an old address does not inherit its access."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="identities"
    )
    issuer = models.CharField(max_length=255)
    subject = models.CharField(max_length=255)
    # As the provider last said, for reading in the admin; the user's own email follows it only
    # when the provider vouches for it (email_verified).
    email = models.CharField(max_length=254, blank=True)
    # The partner a partner-staff member is bound to (MARKETPLACE_OIDC_PARTNER_CLAIM), by slug:
    # the catalog resolves it. Empty for everyone else.
    partner_slug = models.SlugField(max_length=64, blank=True)
    roles = models.JSONField(default=list, blank=True, help_text="Roles the last sign-in mapped.")
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    last_login_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        verbose_name_plural = "identities"
        constraints = [
            models.UniqueConstraint(fields=["issuer", "subject"], name="accounts_identity_subject")
        ]

    def __str__(self) -> str:
        return f"{self.subject} at {self.issuer}"


class ApprovalStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    # Approved; a change with effects outside the database (a refund) is being made, after the
    # approval committed (accounts.approval_services).
    APPLYING = "applying", "Applying"
    APPLIED = "applied", "Applied"
    REJECTED = "rejected", "Rejected"
    EXPIRED = "expired", "Expired"
    FAILED = "failed", "Failed"


class ApprovalRequestQuerySet(models.QuerySet["ApprovalRequest"]):
    def pending(self) -> "ApprovalRequestQuerySet":
        return self.filter(status=ApprovalStatus.PENDING)

    def expired_at(self, moment: datetime) -> "ApprovalRequestQuerySet":
        """Pending requests whose time is up (the beat task marks them expired)."""
        return self.pending().filter(expires_at__lte=moment)


class ApprovalRequest(models.Model):
    """A sensitive change one staff member asked for, applied once enough others approved
    (accounts.approval_services; the kinds and their roles: accounts.approvals)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    kind = models.CharField(max_length=64)
    params = models.JSONField(default=dict, help_text="What the kind applies, as filed.")
    summary = models.TextField(help_text="What will happen, in words, as filed.")
    reason = models.TextField()
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="approval_requests"
    )
    requested_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    # MARKETPLACE_APPROVAL_THRESHOLD when filed: people in all, the requester included.
    threshold = models.PositiveSmallIntegerField()
    status = models.CharField(
        max_length=16, choices=ApprovalStatus.choices, default=ApprovalStatus.PENDING
    )
    applied_at = models.DateTimeField(null=True, blank=True)
    outcome = models.JSONField(null=True, blank=True, help_text="What applying it answered.")
    error = models.TextField(blank=True, help_text="Why applying it failed.")

    objects = ApprovalRequestQuerySet.as_manager()

    class Meta:
        ordering = ["-requested_at"]
        indexes = [models.Index(fields=["status", "expires_at"], name="approval_status_expiry")]

    def __str__(self) -> str:
        return f"{self.kind} ({self.status}) {self.id}"

    def is_expired_at(self, moment: datetime) -> bool:
        return self.expires_at <= moment

    @property
    def approvals_needed(self) -> int:
        """Approvers needed besides the requester."""
        return max(self.threshold - 1, 0)


class ApprovalDecisionKind(models.TextChoices):
    APPROVE = "approve", "Approved"
    REJECT = "reject", "Rejected"


class ApprovalDecision(models.Model):
    """One person's decision on a request; a person decides a request at most once."""

    request = models.ForeignKey(ApprovalRequest, on_delete=models.PROTECT, related_name="decisions")
    by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="approval_decisions"
    )
    decision = models.CharField(max_length=16, choices=ApprovalDecisionKind.choices)
    note = models.TextField(blank=True)
    at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["request", "by"], name="approval_decision_once")
        ]

    def __str__(self) -> str:
        return f"{self.get_decision_display()} by {self.by_id}"


class BreakGlassGrantQuerySet(models.QuerySet["BreakGlassGrant"]):
    def active_at(self, moment: datetime) -> "BreakGlassGrantQuerySet":
        return self.filter(
            revoked_at__isnull=True, active_from__lte=moment, active_until__gt=moment
        )


class BreakGlassGrant(models.Model):
    """A password login for one staff account for a few hours, for when single sign-on is out.
    Filed with `breakglass_grant`, usable only once a second person approved it (its window
    starts then) and until it ends or is revoked. Only the password's hash is kept."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="breakglass_grants"
    )
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    reason = models.TextField()
    hours = models.PositiveSmallIntegerField()
    password_hash = models.CharField(max_length=256, editable=False)
    approval = models.OneToOneField(
        ApprovalRequest,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="breakglass_grant",
    )
    created_at = models.DateTimeField(default=timezone.now)
    active_from = models.DateTimeField(null=True, blank=True)
    active_until = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    uses = models.PositiveIntegerField(default=0)

    objects = BreakGlassGrantQuerySet.as_manager()

    class Meta:
        verbose_name = "break-glass grant"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"break-glass for {self.user_id} ({self.hours} h)"

    def is_active_at(self, moment: datetime) -> bool:
        return (
            self.revoked_at is None
            and self.active_from is not None
            and self.active_until is not None
            and self.active_from <= moment < self.active_until
        )
