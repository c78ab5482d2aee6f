"""Delivery proofs, read-only: what was signed, by which key, and its fingerprint."""

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.safestring import SafeString

from licensing.admin.common import by_id_or_order
from licensing.models import Proof
from marketplace.admin.helpers import ReadOnlyAdmin
from orders.admin.common import order_admin_link, pretty_json


@admin.register(Proof)
class ProofAdmin(ReadOnlyAdmin):
    list_display = ["id", "order_link", "signer_kid", "fingerprint", "created_at"]
    list_filter = ["signer_kid"]
    search_fields = ["=fingerprint"]
    search_help_text = "A proof id, an order id or a fingerprint."
    show_facets = admin.ShowFacets.NEVER
    actions = None
    fields = [
        "id",
        "order_link",
        "delivery",
        "signer_kid",
        "fingerprint",
        "created_at",
        "payload_pretty",
        "token",
    ]
    readonly_fields = fields

    @admin.display(description="Order", ordering="order_id")
    def order_link(self, proof: Proof) -> SafeString | str:
        return order_admin_link(proof.order_id)

    @admin.display(description="Signed payload")
    def payload_pretty(self, proof: Proof) -> SafeString:
        return pretty_json(proof.payload)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        by_id = by_id_or_order(queryset, search_term)
        if by_id is not None:
            return by_id, False
        return super().get_search_results(request, queryset, search_term.strip())
