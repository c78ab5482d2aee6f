"""Who a person is at the company's identity provider, for the accounts signed in through it.

The user tables themselves are the ground floor's (marketplace.User, ApiToken); this app keeps
what binds them to the provider.
"""

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
