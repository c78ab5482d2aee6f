"""Groups in the admin. The role groups' permissions are the code's (marketplace/roles.py,
applied by `migrate`): shown, never edited here, where an edit would be a grant no second
person saw and the next migrate would undo. Other groups are edited as usual, and each change
is recorded (accounts.services.group_change_record)."""

from typing import Any

from django.contrib import admin
from django.contrib.auth.admin import GroupAdmin as DjangoGroupAdmin
from django.contrib.auth.models import Group
from django.db import transaction
from django.http import HttpRequest

from accounts.services import group_change_record, group_permissions
from marketplace.actors import Actor
from marketplace.roles import ROLE_NAMES

admin.site.unregister(Group)


@admin.register(Group)
class GroupAdmin(DjangoGroupAdmin):
    def get_readonly_fields(self, request: HttpRequest, obj: Group | None = None) -> Any:
        if obj is not None and obj.name in ROLE_NAMES:
            return ["name", "permissions"]
        return super().get_readonly_fields(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Group | None = None) -> bool:
        if obj is not None and obj.name in ROLE_NAMES:
            return False
        return super().has_delete_permission(request, obj)

    def changeform_view(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        with transaction.atomic():
            return super().changeform_view(request, *args, **kwargs)

    def save_model(self, request: HttpRequest, obj: Group, form: Any, change: bool) -> None:
        request._group_before = (  # type: ignore[attr-defined]
            (Group.objects.get(pk=obj.pk).name, group_permissions(obj)) if change else None
        )
        super().save_model(request, obj, form, change)

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        group_change_record(
            group=form.instance,
            before=request._group_before,  # type: ignore[attr-defined]
            actor=Actor.of_user(request.user),
        )

    def delete_model(self, request: HttpRequest, obj: Group) -> None:
        with transaction.atomic():
            group_change_record(
                group=obj, before=None, actor=Actor.of_user(request.user), deleted=True
            )
            super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: Any) -> None:
        with transaction.atomic():
            for group in queryset.exclude(name__in=ROLE_NAMES):
                group_change_record(
                    group=group, before=None, actor=Actor.of_user(request.user), deleted=True
                )
            super().delete_queryset(request, queryset.exclude(name__in=ROLE_NAMES))
