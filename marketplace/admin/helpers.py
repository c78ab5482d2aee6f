"""What every app's admin pages share: read-only admins, actions that ask for a reason, and
service errors shown in a form."""

from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db import models
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from marketplace.exceptions import ApplicationError

# Links typed without a scheme are taken as https (Django 6's default).
URL_FIELDS_HTTPS = {models.URLField: {"assume_scheme": "https"}}


class HttpsURLField(forms.URLField):
    """Takes a link typed without a scheme as https, as Django 6 will."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("assume_scheme", "https")
        super().__init__(**kwargs)


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows are written by the services only; the view permission lets staff read them.
    Superusers cannot add, change or delete them here either."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def as_form_error(exc: ApplicationError) -> forms.ValidationError:
    return forms.ValidationError(exc.detail)


def reason_action(
    modeladmin: admin.ModelAdmin,
    request: HttpRequest,
    queryset: QuerySet,
    *,
    title: str,
    apply: Callable[[Any, str], Any],
    done: str,
) -> HttpResponse | None:
    """An action that asks for a reason on an intermediate page, then applies to each object
    and reports per object what was refused."""
    reason = request.POST.get("reason", "").strip()
    if "apply" in request.POST and reason:
        applied = 0
        for obj in queryset.order_by("pk"):
            try:
                apply(obj, reason)
            except ApplicationError as exc:
                modeladmin.message_user(request, f"{obj}: {exc.detail}", messages.ERROR)
            else:
                applied += 1
        if applied:
            modeladmin.message_user(request, done.format(count=applied), messages.SUCCESS)
        return None
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": title,
        "opts": modeladmin.model._meta,
        "queryset": queryset,
        "action": request.POST.get("action", ""),
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        "reason_missing": "apply" in request.POST,
    }
    return TemplateResponse(request, "admin/action_reason.html", context)
