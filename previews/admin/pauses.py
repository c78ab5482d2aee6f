"""Preview pauses: what "Isolate pool" left in force (new sessions refused) and what was lifted;
Lift takes new sessions again."""

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from marketplace.actors import Actor
from marketplace.admin.helpers import ReadOnlyAdmin
from marketplace.exceptions import ApplicationError
from marketplace.roles import may_take_preview_action
from previews.admin.common import of_their_skus
from previews.models import PreviewPause
from previews.services import preview_pause_lift


class InForceFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("in_force", "In force"), ("lifted", "Lifted")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == "in_force":
            return queryset.filter(lifted_at__isnull=True)
        if self.value() == "lifted":
            return queryset.filter(lifted_at__isnull=False)
        return queryset


@admin.register(PreviewPause)
class PreviewPauseAdmin(ReadOnlyAdmin):
    list_display = [
        "scope",
        "in_force",
        "reason",
        "created_at",
        "created_by",
        "lifted_at",
        "lifted_by",
    ]
    list_filter = [InForceFilter]
    list_select_related = ["sku", "created_by", "lifted_by"]
    search_fields = ["sku__slug", "reason"]
    show_facets = admin.ShowFacets.NEVER
    actions = ["lift"]
    fields = ["scope", "in_force", "reason", "created_at", "created_by", "lifted_at", "lifted_by"]
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[PreviewPause]:
        # Partner staff hold no permission here; were they given one, their SKUs' only.
        return of_their_skus(super().get_queryset(request), request)

    def has_lift_permission(self, request: HttpRequest) -> bool:
        return may_take_preview_action(request.user, "lift_pause")

    @admin.display(description="Paused", ordering="sku__slug")
    def scope(self, pause: PreviewPause) -> str:
        return pause.sku.slug if pause.sku_id else "every SKU"

    @admin.display(description="In force", boolean=True)
    def in_force(self, pause: PreviewPause) -> bool:
        return pause.lifted_at is None

    @admin.action(
        description="Lift selected pauses (take new sessions again)", permissions=["lift"]
    )
    def lift(self, request: HttpRequest, queryset: QuerySet[PreviewPause]) -> None:
        actor = Actor.of_user(request.user)
        lifted = 0
        for pause in queryset.filter(lifted_at__isnull=True).select_related("sku").order_by("pk"):
            try:
                preview_pause_lift(pause_id=pause.pk, actor=actor, by=request.user)
            except ApplicationError as exc:
                self.message_user(request, f"{self.scope(pause)}: {exc.detail}", messages.ERROR)
            else:
                lifted += 1
        if lifted:
            self.message_user(request, f"{lifted} pause(s) lifted.", messages.SUCCESS)
        else:
            self.message_user(request, "No pause in force was selected.", messages.WARNING)
