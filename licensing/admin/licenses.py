"""Licenses: find one by what a buyer reads out, see its status, revoke or reissue it."""

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils.safestring import SafeString

from licensing.admin.common import by_id_or_order
from licensing.models import License, LicenseStatus
from licensing.services import license_reissue, license_revoke
from licensing.services.licenses import license_key_normalize
from marketplace.actors import Actor
from marketplace.admin.helpers import ReadOnlyAdmin, reason_action
from marketplace.roles import may_take_licensing_action
from orders.admin.common import order_admin_link


@admin.register(License)
class LicenseAdmin(ReadOnlyAdmin):
    list_display = [
        "license_key",
        "buyer_email",
        "order_link",
        "status",
        "kid",
        "issued_at",
        "expires_at",
    ]
    list_filter = ["status", ("issued_at", admin.DateFieldListFilter)]
    list_select_related = ["order__buyer"]
    search_fields = ["=order__buyer__email"]
    search_help_text = (
        "A license key (case, spaces and dashes do not matter), a buyer's email, an order id "
        "or a license id."
    )
    show_facets = admin.ShowFacets.NEVER
    actions = ["revoke_selected", "reissue_selected"]
    fields = [
        "id",
        "license_key",
        "status",
        "buyer_email",
        "order_link",
        "kid",
        "issued_at",
        "expires_at",
        "entitlements",
        "seats",
        "revoked_at",
        "revoked_reason",
        "supersedes",
        "token",
    ]
    readonly_fields = fields

    @admin.display(description="Buyer", ordering="order__buyer__email")
    def buyer_email(self, license: License) -> str:
        return license.order.buyer.email

    @admin.display(description="Order", ordering="order_id")
    def order_link(self, license: License) -> SafeString | str:
        return order_admin_link(license.order_id)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        by_id = by_id_or_order(queryset, term)
        if by_id is not None:
            return by_id, False
        key = license_key_normalize(term)
        if key is not None:
            return queryset.filter(license_key=key), False
        return super().get_search_results(request, queryset, term)

    # --- Who may do what ---

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        return may_take_licensing_action(request.user, "revoke_license")

    def has_reissue_permission(self, request: HttpRequest) -> bool:
        return may_take_licensing_action(request.user, "reissue_license")

    # --- Actions ---

    @admin.action(description="Revoke selected licenses…", permissions=["revoke"])
    def revoke_selected(
        self, request: HttpRequest, queryset: QuerySet[License]
    ) -> HttpResponse | None:
        # Revoking again would change nothing: the page lists only the active ones.
        return reason_action(
            self,
            request,
            queryset.filter(status=LicenseStatus.ACTIVE),
            title="Revoke licenses (they stop verifying at once)",
            apply=lambda license, reason: license_revoke(
                license_id=license.pk, reason=reason, actor=Actor.of_user(request.user)
            ),
            done="{count} license(s) revoked.",
        )

    @admin.action(description="Reissue selected licenses…", permissions=["reissue"])
    def reissue_selected(
        self, request: HttpRequest, queryset: QuerySet[License]
    ) -> HttpResponse | None:
        def reissue(license: License, reason: str) -> None:
            new = license_reissue(
                license_id=license.pk, reason=reason, actor=Actor.of_user(request.user)
            )
            self.message_user(
                request,
                f"{license.license_key} is revoked; order {license.order_id} now has "
                f"{new.license_key}.",
                messages.INFO,
            )

        return reason_action(
            self,
            request,
            queryset,
            title="Reissue licenses (new key and token; the old license is revoked)",
            apply=reissue,
            done="{count} license(s) reissued.",
        )
