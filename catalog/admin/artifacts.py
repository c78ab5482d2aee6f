"""Every uploaded artifact, read-only."""

from typing import Any

from django.contrib import admin
from django.db.models import Q, QuerySet
from django.http import HttpRequest

from catalog.models import (
    Artifact,
)
from catalog.partner_scope import partner_scope


@admin.register(Artifact)
class ArtifactAdmin(admin.ModelAdmin):
    list_display = [
        "filename",
        "sku",
        "size",
        "sha256",
        "uploaded_at",
        "uploaded_by",
        "integrity_ok",
    ]
    list_filter = ["integrity_ok"]
    search_fields = ["sha256", "filename", "sku__slug", "uuid"]
    list_select_related = ["sku", "uploaded_by"]
    actions = ["check_integrity"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Artifact]:
        # Partner staff: the uploads of their partner's SKUs only.
        return partner_scope(
            super().get_queryset(request), request.user, lambda partner: Q(sku__partner=partner)
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.action(
        description="Check integrity in storage (in the background)", permissions=["view"]
    )
    def check_integrity(self, request: HttpRequest, queryset: QuerySet[Artifact]) -> None:
        from catalog.tasks import artifact_integrity_check

        for artifact_id in queryset.values_list("pk", flat=True):
            artifact_integrity_check.delay(artifact_id)
        self.message_user(request, "Integrity checks queued; results appear on this list.")
