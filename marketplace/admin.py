from typing import Any

from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.forms import BaseUserCreationForm, UserChangeForm
from django.contrib.auth.models import AnonymousUser
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from audit.services import Actor
from catalog.admin.common import reason_action
from marketplace.keystore import KeyStoreError, signing_key_revoke, signing_key_rotate
from marketplace.models import (
    ApiToken,
    LedgerEntry,
    SigningKey,
    SigningKeyPurpose,
    SigningKeyStatus,
    User,
)
from marketplace.money import format_amount
from marketplace.roles import SECURITY
from marketplace.services import api_token_revoke

admin.site.site_header = "Marketplace administration"
admin.site.site_title = "Marketplace admin"
admin.site.index_title = "Content, finance, security and support"


def is_security(user: User | AnonymousUser) -> bool:
    """Security staff or a superuser: who may act on the platform's keys and the Kernel push.
    A group check rather than a model permission, since these actions change no row the admin
    could edit (the services write them, with their audit events)."""
    if not (user.is_active and user.is_staff):
        return False
    return user.is_superuser or user.groups.filter(name=SECURITY).exists()


class UserCreationForm(BaseUserCreationForm):
    class Meta:
        model = User
        fields = ["email"]


class UserEditForm(UserChangeForm):
    class Meta:
        model = User
        fields = "__all__"


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    form = UserEditForm
    add_form = UserCreationForm
    ordering = ["email"]
    list_display = ["email", "display_name", "is_staff", "is_active", "date_joined", "last_login"]
    list_filter = ["is_staff", "is_active", "is_superuser", "groups"]
    search_fields = ["email", "display_name", "uuid"]
    readonly_fields = ["uuid", "date_joined", "last_login"]
    fieldsets = [
        (None, {"fields": ["email", "password", "uuid"]}),
        ("Profile", {"fields": ["display_name"]}),
        (
            "Access",
            {
                "fields": ["is_active", "is_staff", "is_superuser", "groups"],
                "description": "Staff roles are the groups Content ops, Finance, Security "
                "and Support.",
            },
        ),
        ("Dates", {"fields": ["date_joined", "last_login"]}),
    ]
    add_fieldsets = [
        (None, {"classes": ["wide"], "fields": ["email", "password1", "password2"]}),
    ]
    filter_horizontal = ["groups"]


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = [
        "hint",
        "user",
        "name",
        "created_at",
        "last_used_at",
        "expires_at",
        "revoked_at",
    ]
    list_filter = [("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["hint", "user__email", "name"]
    list_select_related = ["user"]
    readonly_fields = [
        "user",
        "name",
        "hint",
        "created_at",
        "last_used_at",
        "expires_at",
        "revoked_at",
    ]
    fields = readonly_fields
    actions = ["revoke"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # issued with `manage.py issue_api_token`, shown once

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.action(description="Revoke selected tokens", permissions=["change"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        actor = Actor.of_user(request.user)
        count = sum(1 for token in queryset if api_token_revoke(token_pk=token.pk, actor=actor))
        self.message_user(request, f"{count} token(s) revoked.", messages.SUCCESS)


@admin.register(SigningKey)
class SigningKeyAdmin(admin.ModelAdmin):
    """The platform's signing keys, read-only: they are made, rotated and revoked only by the
    key-store services, which audit each change. The sealed private key is never shown."""

    list_display = [
        "kid",
        "purpose",
        "algorithm",
        "backend",
        "status",
        "created_at",
        "retired_at",
        "revoked_at",
        "revoked_reason",
    ]
    list_filter = ["purpose", "status"]
    search_fields = ["=kid"]
    fields = list_display
    readonly_fields = list_display
    actions = ["rotate", "revoke"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # the key store creates keys, on first use or by rotation

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # revoke instead: checkpoints, exports and licenses name their key

    def has_security_permission(self, request: HttpRequest) -> bool:
        return is_security(request.user)

    @admin.action(
        description="Rotate the keys of the selected purposes (new active key)",
        permissions=["security"],
    )
    def rotate(self, request: HttpRequest, queryset: QuerySet[SigningKey]) -> None:
        actor = Actor.of_user(request.user)
        purposes = sorted(set(queryset.values_list("purpose", flat=True)))
        for purpose in purposes:
            try:
                new, previous = signing_key_rotate(purpose=SigningKeyPurpose(purpose), actor=actor)
            except KeyStoreError as exc:
                self.message_user(request, f"{purpose}: not rotated: {exc}", messages.ERROR)
                continue
            retired = f"; {previous.kid} retired (it still verifies)" if previous else ""
            self.message_user(
                request, f"{purpose}: {new.kid} is now the active key{retired}.", messages.SUCCESS
            )

    @admin.action(description="Revoke selected keys…", permissions=["security"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[SigningKey]) -> HttpResponse | None:
        # Revoking again would change nothing: the page lists only the keys it applies to.
        return reason_action(
            self,
            request,
            queryset.exclude(status=SigningKeyStatus.REVOKED),
            title="Revoke signing keys (what they signed no longer verifies)",
            apply=lambda key, reason: signing_key_revoke(
                kid=key.kid, reason=reason, actor=Actor.of_user(request.user)
            ),
            done="{count} key(s) revoked.",
        )


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
