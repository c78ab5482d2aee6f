"""Checkpoints and exports: short, read-only registers."""

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from audit.models import AuditExport, Checkpoint
from marketplace.admin.helpers import ReadOnlyAdmin


@admin.register(Checkpoint)
class CheckpointAdmin(ReadOnlyAdmin):
    # Append-only records: no bulk action applies to them.
    actions = None
    list_display = ["sequence_link", "short_hash", "signed_at", "key_id"]
    list_filter = ["key_id"]
    show_facets = admin.ShowFacets.NEVER
    fields = ["sequence_link", "hash", "previous", "signed_at", "key_id", "signature"]
    readonly_fields = fields

    @admin.display(description="Event", ordering="sequence")
    def sequence_link(self, checkpoint: Checkpoint) -> SafeString:
        return format_html(
            '<a href="{}">#{}</a>',
            f"{reverse('admin:audit_auditevent_changelist')}?q=%23{checkpoint.sequence}",
            checkpoint.sequence,
        )

    @admin.display(description="Hash")
    def short_hash(self, checkpoint: Checkpoint) -> str:
        return f"{checkpoint.hash[:16]}…"


@admin.register(AuditExport)
class AuditExportAdmin(ReadOnlyAdmin):
    # Append-only records: no bulk action applies to them.
    actions = None
    list_display = [
        "day",
        "event_count",
        "first_sequence",
        "last_sequence",
        "location",
        "short_sha256",
        "retain_until",
    ]
    date_hierarchy = "day"  # one row a day: the table stays small
    show_facets = admin.ShowFacets.NEVER
    fields = [
        "day",
        "period_start",
        "period_end",
        "event_count",
        "previous_sequence",
        "first_sequence",
        "last_sequence",
        "location",
        "file_sha256",
        "file_size",
        "digest_sha256",
        "key_id",
        "retain_until",
        "created_at",
    ]
    readonly_fields = fields

    @admin.display(description="File SHA-256")
    def short_sha256(self, export: AuditExport) -> str:
        return f"{export.file_sha256[:16]}…"
