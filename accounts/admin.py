"""Users and API tokens in the admin. What an edit changes in an account's access (active,
staff, superuser, roles) and token revocations are recorded through accounts.services.

An edit that grants access by hand (a role added, staff or superuser turned on) does not save
that part: it files a `role.grant` request that another Security member approves (Pending
approvals, accounts.admin_approvals); the rest of the edit, taking access away included, saves.
"""

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.forms import BaseUserCreationForm, UserChangeForm
from django.contrib.auth.models import Group
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse

from accounts.approval_services import approval_next_step, approval_request
from accounts.services import (
    Access,
    account_access_record,
    account_password_set_record,
    api_token_revoke,
    role_grant_params,
)
from marketplace.actors import Actor
from marketplace.exceptions import ApplicationError
from marketplace.models import ApiToken, User


class UserCreationForm(BaseUserCreationForm):
    class Meta:
        model = User
        fields = ["email"]


class UserEditForm(UserChangeForm):
    access_reason = forms.CharField(
        required=False,
        max_length=1000,
        label="Why (for a grant)",
        help_text="Adding a role or turning staff or superuser on waits for another Security "
        "member's approval; say why, for them.",
        widget=forms.Textarea(attrs={"rows": 2, "cols": 60}),
    )

    class Meta:
        model = User
        fields = "__all__"

    def access_asked(self) -> Access:
        """The access this form asks for (valid forms only)."""
        data = self.cleaned_data
        return Access(
            bool(data.get("is_active")),
            bool(data.get("is_staff")),
            bool(data.get("is_superuser")),
            frozenset(group.name for group in data.get("groups") or []),
        )

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        # The instance is still as stored: the form's values reach it after clean().
        self.grant = (
            self.instance.pk is not None
            and "groups" in data
            and self.access_asked().grants_beyond(Access.of(self.instance))
        )
        if self.grant and not (data.get("access_reason") or "").strip():
            self.add_error("access_reason", "Say why: a grant of access waits for a second person.")
        return data


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
                "fields": ["is_active", "is_staff", "is_superuser", "groups", "access_reason"],
                "description": "Staff roles are the groups Content ops, Finance, Security "
                "and Support. Granting a role, staff or superuser waits for another Security "
                "member's approval; taking access away is at once.",
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
        if change and getattr(form, "grant", False):
            # The grant waits for its approval (save_related files it): the flags it would
            # turn on stay as they are.
            obj.is_staff = obj.is_staff and form.access_before.is_staff
            obj.is_superuser = obj.is_superuser and form.access_before.is_superuser
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
        if change and getattr(form, "grant", False):
            self._file_grant(request, form)
        # Inside the admin's transaction, after the roles are saved: the audit event commits
        # or rolls back with the change it records.
        account_access_record(
            user=form.instance, before=form.access_before, actor=Actor.of_user(request.user)
        )

    def _file_grant(self, request: HttpRequest, form: Any) -> None:
        """Puts the roles back as they were and files the access asked for as a `role.grant`
        request, in the admin's transaction. A refused request (only Security and superusers
        file grants) is an error message; the rest of the edit saves."""
        user, before, asked = form.instance, form.access_before, form.access_asked()
        user.groups.set(Group.objects.filter(name__in=before.roles))
        try:
            filed = approval_request(
                kind="role.grant",
                params=role_grant_params(user=user, target=asked),
                reason=form.cleaned_data["access_reason"],
                requested_by=request.user,
            )
        except ApplicationError as exc:
            self.message_user(request, f"The grant was not filed: {exc.detail}", messages.ERROR)
            return
        self.message_user(request, f"{filed.summary} {approval_next_step(filed)}", messages.WARNING)


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


# Pending approvals and break-glass grants; groups.
from accounts import admin_approvals, admin_groups  # noqa: E402, F401
