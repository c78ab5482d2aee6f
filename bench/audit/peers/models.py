"""The same partner row twice: one audited by django-auditlog (a LogEntry per write, with the
changed fields), one by django-simple-history (a full historical copy per write). Fields as
catalog.Partner's."""

from auditlog.registry import auditlog
from django.db import models
from simple_history.models import HistoricalRecords


class PartnerFields(models.Model):
    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=16)
    legal_name = models.CharField(max_length=200, blank=True)
    contact_email = models.EmailField(blank=True)
    website = models.URLField(blank=True)
    description = models.TextField(blank=True)
    contract_reference = models.CharField(max_length=100, blank=True)
    payout_reference = models.CharField(max_length=100, blank=True)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return self.name


class AuditlogPartner(PartnerFields):
    pass


class HistoryPartner(PartnerFields):
    history = HistoricalRecords()


auditlog.register(AuditlogPartner)
