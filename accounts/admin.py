"""Users and API tokens in the admin. What an edit changes in an account's access (active,
staff, superuser, roles) and token revocations are recorded through accounts.services."""

from typing import Any

from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.forms import BaseUserCreationForm, UserChangeForm
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse

from accounts.services import (
    Access,
    account_access_record,
    account_password_set_record,
    api_token_revoke,
)
from marketplace.actors import Actor
from marketplace.models import ApiToken, User


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

    def save_model(self, request: HttpRequest, obj: User, form: Any, change: bool) -> None:
        # The access as stored before this save (the roles are saved after it, in
        # save_related), kept with the form of this one request.
        form.access_before = Access.of(User.objects.get(pk=obj.pk)) if change else None
        super().save_model(request, obj, form, change)

    def user_change_password(
        self, request: HttpRequest, id: str, form_url: str = ""
    ) -> HttpResponse:
        # The password form saves, then redirects; the event is written in the same
        # transaction, so a failed save records nothing.
        with transaction.atomic():
            response = super().user_change_password(request, id, form_url)
            if request.method == "POST" and response.status_code == 302:
                account_password_set_record(
                    user=User.objects.get(pk=id), actor=Actor.of_user(request.user)
                )
        return response

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        # Inside the admin's transaction, after the roles are saved: the audit event commits
        # or rolls back with the change it records.
        account_access_record(
            user=form.instance, before=form.access_before, actor=Actor.of_user(request.user)
        )


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
