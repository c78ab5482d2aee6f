"""Deliveries, their download links and download log: what was packaged, how often it was
fetched and by whom, and regenerating a package."""

from typing import Any

from django.contrib import admin
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from licensing.admin.common import by_id_or_order, short_hash, uuid_of
from licensing.models import Delivery, DownloadLog, DownloadSession
from licensing.services import delivery_regenerate
from marketplace.actors import Actor
from marketplace.admin.helpers import ReadOnlyAdmin, reason_action
from marketplace.roles import may_take_licensing_action
from orders.admin.common import order_admin_link


def _delivery_link(delivery_id: Any) -> SafeString | str:
    if delivery_id is None:
        return "—"
    url = reverse("admin:licensing_delivery_change", args=[delivery_id])
    return format_html('<a href="{}">{}</a>', url, delivery_id)


class _RecordInline(admin.TabularInline):
    """Rows the platform writes; staff only read them."""

    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class DownloadLogInline(_RecordInline):
    model = DownloadLog
    fields = ["at", "kind", "ip", "user_agent"]
    readonly_fields = fields
    ordering = ["-at", "-id"]
    verbose_name = "download"
    verbose_name_plural = "download log"


class DownloadSessionInline(_RecordInline):
    """The links handed out: each counts once (`counted at`), however many requests it took."""

    model = DownloadSession
    fields = ["created_at", "kind", "expires_at", "counted_at", "requests", "bytes_served"]
    readonly_fields = fields
    ordering = ["-created_at", "-id"]
    verbose_name = "download link"
    verbose_name_plural = "download links (one download each, however many requests)"


@admin.register(Delivery)
class DeliveryAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "order_link",
        "buyer_email",
        "status",
        "attempts",
        "error_summary",
        "downloads",
        "package_hash",
        "key_wrapping",
        "created_at",
        "ready_at",
    ]
    list_filter = ["status", ("created_at", admin.DateFieldListFilter)]
    list_select_related = ["order__buyer"]
    search_fields = ["=order__buyer__email"]
    search_help_text = "A delivery id, an order id or a buyer's email."
    show_facets = admin.ShowFacets.NEVER
    actions = ["regenerate_selected"]
    inlines = [DownloadSessionInline, DownloadLogInline]
    fieldsets = [
        (None, {"fields": ["id", "order_link", "buyer_email", "status", "created_at"]}),
        (
            "Packaging",
            {"fields": ["attempts", "attempted_at", "last_error", "ready_at", "supersedes_link"]},
        ),
        (
            "Package",
            {
                "fields": [
                    "format",
                    "storage_name",
                    "artifact_sha256",
                    "package_sha256",
                    "package_size",
                    "key_wrapping",
                    "downloads",
                ]
            },
        ),
    ]
    readonly_fields = [
        "id",
        "order_link",
        "buyer_email",
        "status",
        "created_at",
        "attempts",
        "attempted_at",
        "last_error",
        "ready_at",
        "supersedes_link",
        "format",
        "storage_name",
        "artifact_sha256",
        "package_sha256",
        "package_size",
        "key_wrapping",
        "downloads",
    ]

    @admin.display(description="Buyer", ordering="order__buyer__email")
    def buyer_email(self, delivery: Delivery) -> str:
        return delivery.order.buyer.email

    @admin.display(description="Order", ordering="order_id")
    def order_link(self, delivery: Delivery) -> SafeString | str:
        return order_admin_link(delivery.order_id)

    @admin.display(description="Package SHA-256")
    def package_hash(self, delivery: Delivery) -> str:
        return short_hash(delivery.package_sha256)

    @admin.display(description="Last error")
    def error_summary(self, delivery: Delivery) -> str:
        lines = delivery.last_error.strip().splitlines()
        return lines[-1][:120] if lines else "—"

    @admin.display(description="Supersedes")
    def supersedes_link(self, delivery: Delivery) -> SafeString | str:
        return _delivery_link(delivery.supersedes_id)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        by_id = by_id_or_order(queryset, search_term)
        if by_id is not None:
            return by_id, False
        return super().get_search_results(request, queryset, search_term.strip())

    def has_regenerate_permission(self, request: HttpRequest) -> bool:
        return may_take_licensing_action(request.user, "regenerate_delivery")

    @admin.action(description="Regenerate selected deliveries…", permissions=["regenerate"])
    def regenerate_selected(
        self, request: HttpRequest, queryset: QuerySet[Delivery]
    ) -> HttpResponse | None:
        return reason_action(
            self,
            request,
            queryset,
            title="Regenerate deliveries (a new package under a new data key; the old link dies)",
            apply=lambda delivery, reason: delivery_regenerate(
                delivery_id=delivery.pk, reason=reason, actor=Actor.of_user(request.user)
            ),
            done="{count} delivery(ies) regenerated; the new package is being made.",
        )


@admin.register(DownloadLog)
class DownloadLogAdmin(ReadOnlyAdmin):
    """Every download (or, on S3, every link handed out), with time, address and user agent."""

    list_display = ["at", "kind", "delivery_link", "order_link", "ip", "user_agent"]
    list_filter = ["kind", ("at", admin.DateFieldListFilter)]
    list_select_related = ["delivery"]
    search_fields = ["=ip"]
    search_help_text = "An order id, a delivery id or an IP address."
    show_facets = admin.ShowFacets.NEVER
    actions = None
    fields = ["at", "kind", "delivery_link", "order_link", "ip", "user_agent"]
    readonly_fields = fields

    @admin.display(description="Delivery", ordering="delivery_id")
    def delivery_link(self, log: DownloadLog) -> SafeString | str:
        return _delivery_link(log.delivery_id)

    @admin.display(description="Order")
    def order_link(self, log: DownloadLog) -> SafeString | str:
        return order_admin_link(log.delivery.order_id)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        value = uuid_of(search_term)
        if value is not None:
            return queryset.filter(Q(delivery_id=value) | Q(delivery__order_id=value)), False
        return super().get_search_results(request, queryset, search_term.strip())
