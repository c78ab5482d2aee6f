"""Royalty lines: each partner's share of each paid order, read-only, for Finance and for
Partner staff (their own partner's lines only)."""

from django.contrib import admin
from django.db.models import Q, QuerySet
from django.http import HttpRequest

from catalog.partner_scope import is_partner_staff, partner_scope
from marketplace.admin.helpers import ReadOnlyAdmin
from marketplace.money import format_amount
from orders.models import RoyaltyLine


@admin.register(RoyaltyLine)
class RoyaltyLineAdmin(ReadOnlyAdmin):
    list_display = [
        "order_id",
        "sku_slug",
        "partner",
        "basis_points",
        "amount_display",
        "receives_remainder",
        "paid_at",
    ]
    list_filter = ["partner", "currency", "receives_remainder"]
    list_select_related = ["order", "partner"]
    search_fields = ["=order__id", "=order__sku_slug", "partner__slug", "partner__name"]
    search_help_text = "An order id, a SKU slug, or a partner's slug or name."
    show_facets = admin.ShowFacets.NEVER
    ordering = ["-order__paid_at", "-id"]
    fields = [
        "order_id",
        "sku_slug",
        "partner",
        "basis_points",
        "amount_display",
        "receives_remainder",
        "paid_at",
    ]
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[RoyaltyLine]:
        return partner_scope(
            super().get_queryset(request), request.user, lambda partner: Q(partner=partner)
        )

    def get_list_filter(self, request: HttpRequest) -> list[object]:
        if not is_partner_staff(request.user):
            return list(self.list_filter)
        return [("partner", admin.RelatedOnlyFieldListFilter), "currency", "receives_remainder"]

    @admin.display(description="SKU", ordering="order__sku_slug")
    def sku_slug(self, line: RoyaltyLine) -> str:
        return line.order.sku_slug

    @admin.display(description="Amount", ordering="amount")
    def amount_display(self, line: RoyaltyLine) -> str:
        return format_amount(line.amount, line.currency)

    @admin.display(description="Paid (UTC)", ordering="order__paid_at")
    def paid_at(self, line: RoyaltyLine) -> object:
        return line.order.paid_at
