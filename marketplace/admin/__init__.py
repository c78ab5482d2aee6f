"""The admin site's titles, and the admin of the local Finance backend's ledger. Helpers every
app's admin shares are in marketplace.admin.helpers."""

from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from marketplace.models import LedgerEntry
from marketplace.money import format_amount

admin.site.site_header = "Marketplace administration"
admin.site.site_title = "Marketplace admin"
admin.site.index_title = "Content, finance, security and support"


@admin.register(LedgerEntry)
class LedgerEntryAdmin(admin.ModelAdmin):
    """The local Finance backend's ledger, read-only: entries are written only by Finance
    postings (orders.services.finance), once per key. Empty when Finance is configured."""

    list_display = ["reference", "order", "kind", "amount_display", "created_at"]
    list_filter = ["kind", "currency"]
    search_fields = ["=order_id", "=reference", "=idempotency_key"]
    search_help_text = "An order id, a ledger reference or a posting's key."
    show_facets = admin.ShowFacets.NEVER
    fields = [
        "reference",
        "idempotency_key",
        "order",
        "kind",
        "amount_display",
        "created_at",
        "payload",
    ]
    readonly_fields = fields
    actions = None

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="Order", ordering="order_id")
    def order(self, entry: LedgerEntry) -> SafeString:
        return format_html(
            '<a href="{}">{}</a>',
            reverse("admin:orders_order_change", args=[entry.order_id]),
            entry.order_id,
        )

    @admin.display(description="Amount", ordering="amount")
    def amount_display(self, entry: LedgerEntry) -> str:
        return format_amount(entry.amount, entry.currency)
