"""Finance postings (the outbox), their replay, and the reconciliation report."""

from collections import Counter
from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path
from django.utils.safestring import SafeString

from marketplace.actors import Actor
from marketplace.admin.helpers import ReadOnlyAdmin
from marketplace.finance import FinanceUnavailable
from marketplace.money import format_amount
from marketplace.roles import may_take_order_action
from orders import services
from orders.admin.common import (
    order_admin_link,
    pretty_json,
    report_postings,
)
from orders.models import FinancePosting, PostingStatus


@admin.register(FinancePosting)
class FinancePostingAdmin(ReadOnlyAdmin):
    list_display = [
        "idempotency_key",
        "order_link",
        "kind",
        "amount_display",
        "status",
        "attempts",
        "next_attempt_at",
        "error_short",
        "ledger_reference",
    ]
    list_filter = ["status", "kind"]
    search_fields = ["=idempotency_key", "=ledger_reference"]
    search_help_text = "A posting's key (the order id for a sale) or a ledger reference."
    show_facets = admin.ShowFacets.NEVER
    actions = ["replay"]
    fields = [
        "idempotency_key",
        "order_link",
        "kind",
        "amount_display",
        "status",
        "attempts",
        "next_attempt_at",
        "last_error",
        "ledger_reference",
        "created_at",
        "posted_at",
        "payload_pretty",
    ]
    readonly_fields = fields

    @admin.display(description="Order")
    def order_link(self, posting: FinancePosting) -> SafeString | str:
        return order_admin_link(posting.order_id)

    @admin.display(description="Amount", ordering="amount")
    def amount_display(self, posting: FinancePosting) -> str:
        return format_amount(posting.amount, posting.currency)

    @admin.display(description="Last error")
    def error_short(self, posting: FinancePosting) -> str:
        return (
            (posting.last_error[:80] + "…") if len(posting.last_error) > 80 else posting.last_error
        )

    @admin.display(description="Payload")
    def payload_pretty(self, posting: FinancePosting) -> SafeString:
        return pretty_json(posting.payload)

    def has_replay_permission(self, request: HttpRequest) -> bool:
        return may_take_order_action(request.user, "replay_finance")

    def get_urls(self) -> list[URLPattern]:
        wrap = self.admin_site.admin_view
        return [
            path(
                "reconciliation/",
                wrap(self.reconciliation_view),
                name="orders_financeposting_reconciliation",
            ),
            *super().get_urls(),
        ]

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        extra_context = {
            **(extra_context or {}),
            "can_reconcile": self.has_view_permission(request),
        }
        return super().changelist_view(request, extra_context)

    @admin.action(
        description="Send selected pending postings to Finance now", permissions=["replay"]
    )
    def replay(self, request: HttpRequest, queryset: QuerySet[FinancePosting]) -> None:
        actor = Actor.of_user(request.user)
        pending = queryset.filter(status=PostingStatus.PENDING).order_by("pk")
        results = Counter(
            services.finance_posting_send(posting_pk=pk, actor=actor)
            for pk in pending.values_list("pk", flat=True)
        )
        report_postings(self, request, results, subject="Selected postings")

    def reconciliation_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        error = ""
        try:
            rows = services.reconciliation_report()
        except FinanceUnavailable as exc:
            rows, error = [], f"Finance could not be asked for its ledger: {exc}"
        context = {
            **self.admin_site.each_context(request),
            "title": "Reconciliation: orders whose money differs from the ledger",
            "opts": self.opts,
            "rows": [
                {
                    "row": row,
                    "expected": format_amount(row.expected, row.currency),
                    "ledger": format_amount(row.ledger, row.currency),
                }
                for row in rows
            ],
            "error": error,
        }
        return TemplateResponse(request, "admin/orders/reconciliation.html", context)
