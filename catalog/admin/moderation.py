"""The moderation review queue: what the backend flagged waits here for the Moderator role,
who approves, rejects or overrides it with a reason (catalog.services.moderation_decide)."""

from typing import Any

from django.contrib import admin
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils.html import format_html_join
from django.utils.safestring import SafeString

from catalog import services
from catalog.models import ModerationReview, ModerationState
from catalog.partner_scope import partner_scope
from marketplace.admin.helpers import reason_action
from marketplace.roles import MODERATOR, has_role


class WaitingFilter(admin.SimpleListFilter):
    """The queue first: a moderator lands on what waits for them."""

    title = "queue"
    parameter_name = "queue"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("waiting", "Waiting for a moderator"), ("all", "All reviews")]

    def choices(self, changelist: Any) -> Any:
        for lookup, title in self.lookup_choices:
            yield {
                "selected": (self.value() or "waiting") == lookup,
                "query_string": changelist.get_query_string({self.parameter_name: lookup}),
                "display": title,
            }

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if (self.value() or "waiting") == "waiting":
            return queryset.filter(state=ModerationState.FLAGGED)
        return queryset


@admin.register(ModerationReview)
class ModerationReviewAdmin(admin.ModelAdmin):
    list_display = [
        "created_at",
        "sku",
        "subject",
        "sku_version",
        "state",
        "outcome",
        "rules",
        "submitted_by",
        "decided_by",
    ]
    list_filter = [WaitingFilter, "state", "subject", "outcome", "backend"]
    search_fields = ["sku__slug", "sku__title", "fingerprint"]
    list_select_related = ["sku", "submitted_by", "decided_by"]
    ordering = ["created_at", "id"]
    actions = ["approve", "reject", "override"]
    fields = [
        "sku",
        "subject",
        "sku_version",
        "fingerprint",
        "artifact",
        "backend",
        "outcome",
        "rules_broken",
        "state",
        "submitted_by",
        "decided_by",
        "decision_reason",
        "decided_at",
        "created_at",
    ]
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[ModerationReview]:
        return partner_scope(
            super().get_queryset(request), request.user, lambda partner: Q(sku__partner=partner)
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_moderate_permission(self, request: HttpRequest) -> bool:
        return has_role(request.user, MODERATOR)

    @admin.display(description="Rules")
    def rules(self, review: ModerationReview) -> str:
        return ", ".join(review.reason_codes()) or "—"

    @admin.display(description="Rules broken")
    def rules_broken(self, review: ModerationReview) -> SafeString | str:
        if not review.reasons:
            return "None."
        return format_html_join(
            "",
            "<p><code>{}</code> ({}): {}</p>",
            (
                (reason.get("code"), reason.get("outcome"), reason.get("message"))
                for reason in review.reasons
            ),
        )

    def _decide(
        self, request: HttpRequest, queryset: QuerySet, *, decision: str, title: str, done: str
    ) -> HttpResponse | None:
        return reason_action(
            self,
            request,
            queryset,
            title=title,
            apply=lambda review, reason: services.moderation_decide(
                review_id=review.pk, decision=decision, reason=reason, user=request.user
            ),
            done=done,
        )

    @admin.action(description="Approve selected (flagged) items", permissions=["moderate"])
    def approve(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        return self._decide(
            request,
            queryset,
            decision=services.Decision.APPROVE,
            title="Approve flagged items",
            done="{count} item(s) approved.",
        )

    @admin.action(description="Reject selected items", permissions=["moderate"])
    def reject(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        return self._decide(
            request,
            queryset,
            decision=services.Decision.REJECT,
            title="Reject items (the partner is told the reason)",
            done="{count} item(s) rejected.",
        )

    @admin.action(
        description="Override selected blocks or rejections (let them pass)",
        permissions=["moderate"],
    )
    def override(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        return self._decide(
            request,
            queryset,
            decision=services.Decision.OVERRIDE,
            title="Override blocks or rejections",
            done="{count} item(s) overridden.",
        )
