"""Partner webhooks in the admin: endpoints (Partner staff register and manage their own
partner's; staff see all), messages with their deliveries, and every attempt.

Rows are written by orders.partner_webhooks.services only: the endpoint form calls the
service in its validation, so what the service refuses shows at the field, and nothing is
written. A secret is shown once, in the message after it was made or rotated. Disabled
endpoints are listed with the reason. Replay: select messages (one, or a period through the
date hierarchy and the filters) and run "Replay".
"""

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import Q, QuerySet
from django.http import HttpRequest

from catalog.models import Partner
from catalog.partner_scope import is_partner_staff, partner_of_staff, partner_scope
from marketplace.actors import Actor
from marketplace.admin.helpers import HttpsURLField, ReadOnlyAdmin
from marketplace.exceptions import ApplicationError
from marketplace.roles import FINANCE, PARTNER_STAFF, SUPPORT, has_role
from orders.partner_webhooks import services
from orders.partner_webhooks.exceptions import WebhookEndpointInvalid
from orders.partner_webhooks.models import (
    PartnerEvent,
    PartnerWebhookAttempt,
    PartnerWebhookDelivery,
    PartnerWebhookEndpoint,
    PartnerWebhookMessage,
)

# Who may replay messages and rotate, enable or disable endpoints (Partner staff: their own).
WEBHOOK_ACTION_ROLES = (FINANCE, SUPPORT, PARTNER_STAFF)


def _scoped(queryset: QuerySet[Any], request: HttpRequest) -> QuerySet[Any]:
    return partner_scope(queryset, request.user, lambda partner: Q(partner=partner))


class EndpointForm(forms.ModelForm):
    url = HttpsURLField(label="URL", max_length=2000)
    events = forms.MultipleChoiceField(
        choices=PartnerEvent.choices, widget=forms.CheckboxSelectMultiple
    )

    class Meta:
        model = PartnerWebhookEndpoint
        fields = ["partner", "url", "events", "description"]

    # Set by the admin before validation.
    request: HttpRequest
    saved: PartnerWebhookEndpoint | None = None
    new_secret: str | None = None

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if self.errors:
            return data
        actor = Actor.of_user(self.request.user)
        try:
            if self.instance._state.adding:
                self.saved, self.new_secret = services.endpoint_create(
                    actor=actor,
                    partner=data["partner"],
                    url=data["url"],
                    events=data["events"],
                    description=data.get("description") or "",
                )
            else:
                self.saved = services.endpoint_update(
                    actor=actor,
                    endpoint=self.instance,
                    url=data["url"],
                    events=data["events"],
                    description=data.get("description") or "",
                )
        except WebhookEndpointInvalid as exc:
            for field, problems in (exc.errors or {None: [exc.detail]}).items():
                for problem in problems:
                    self.add_error(field if field in self.fields else None, problem)
        return data


@admin.register(PartnerWebhookEndpoint)
class PartnerWebhookEndpointAdmin(admin.ModelAdmin):
    form = EndpointForm
    list_display = ["url", "partner", "events_display", "state", "failing_since", "created_at"]
    list_filter = [("disabled_at", admin.EmptyFieldListFilter), "partner"]
    list_select_related = ["partner"]
    search_fields = ["url", "partner__slug"]
    readonly_fields = [
        "state",
        "secret_rotated_at",
        "previous_secret_expires_at",
        "failing_since",
        "disabled_reason",
        "created_at",
    ]
    actions = ["rotate_secret", "enable", "disable"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[PartnerWebhookEndpoint]:
        return _scoped(super().get_queryset(request), request)

    def get_list_filter(self, request: HttpRequest) -> list[Any]:
        if is_partner_staff(request.user):
            return [("disabled_at", admin.EmptyFieldListFilter)]
        return list(self.list_filter)

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any):
        form_class = super().get_form(request, obj, change=change, **kwargs)

        class RequestForm(form_class):  # type: ignore[misc, valid-type]
            def __init__(self, *args: Any, **form_kwargs: Any) -> None:
                super().__init__(*args, **form_kwargs)
                self.request = request
                if "partner" in self.fields:
                    if is_partner_staff(request.user):
                        own = partner_of_staff(request.user)
                        self.fields["partner"].queryset = Partner.objects.filter(
                            pk=own.pk if own else None
                        )
                    if obj is not None:
                        self.fields["partner"].disabled = True

        return RequestForm

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # its messages and attempts stay: disable it instead

    def save_form(self, request: HttpRequest, form: Any, change: bool) -> Any:
        return form.saved

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        if form.new_secret:
            self.message_user(
                request,
                f"The endpoint's signing secret, shown this once: {form.new_secret}",
                messages.WARNING,
            )

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        pass  # nothing related is edited here

    @admin.display(description="Events")
    def events_display(self, endpoint: PartnerWebhookEndpoint) -> str:
        return ", ".join(endpoint.events or [])

    @admin.display(description="State")
    def state(self, endpoint: PartnerWebhookEndpoint) -> str:
        if endpoint.disabled_at:
            return f"Disabled {endpoint.disabled_at:%Y-%m-%d %H:%M} UTC: {endpoint.disabled_reason}"
        return "Failing" if endpoint.failing_since else "Enabled"

    def _may_act(self, request: HttpRequest) -> bool:
        if has_role(request.user, *WEBHOOK_ACTION_ROLES):
            return True
        self.message_user(request, "Your roles do not allow this action.", messages.ERROR)
        return False

    @admin.action(description="Rotate the signing secret (the old one signs for an overlap)")
    def rotate_secret(self, request: HttpRequest, queryset: QuerySet) -> None:
        if not self._may_act(request):
            return
        actor = Actor.of_user(request.user)
        for endpoint in queryset.order_by("pk"):
            secret = services.endpoint_secret_rotate(actor=actor, endpoint=endpoint)
            self.message_user(
                request, f"{endpoint.url}: new secret, shown this once: {secret}", messages.WARNING
            )

    @admin.action(description="Enable")
    def enable(self, request: HttpRequest, queryset: QuerySet) -> None:
        if not self._may_act(request):
            return
        for endpoint in queryset.order_by("pk"):
            services.endpoint_enable(actor=Actor.of_user(request.user), endpoint=endpoint)
        self.message_user(request, "Enabled.", messages.SUCCESS)

    @admin.action(description="Disable")
    def disable(self, request: HttpRequest, queryset: QuerySet) -> None:
        if not self._may_act(request):
            return
        for endpoint in queryset.order_by("pk"):
            services.endpoint_disable(
                actor=Actor.of_user(request.user), endpoint=endpoint, reason="disabled by staff"
            )
        self.message_user(request, "Disabled.", messages.SUCCESS)


class DeliveryInline(admin.TabularInline):
    model = PartnerWebhookDelivery
    fields = ["endpoint", "status", "attempts", "next_attempt_at", "last_error", "delivered_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(PartnerWebhookMessage)
class PartnerWebhookMessageAdmin(ReadOnlyAdmin):
    list_display = ["webhook_id", "event_type", "partner", "created_at"]
    list_filter = ["event_type", "partner"]
    list_select_related = ["partner"]
    date_hierarchy = "created_at"
    search_fields = ["=dedupe_key"]
    fields = ["webhook_id", "event_type", "partner", "dedupe_key", "payload", "created_at"]
    readonly_fields = fields
    inlines = [DeliveryInline]
    actions = ["replay"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[PartnerWebhookMessage]:
        return _scoped(super().get_queryset(request), request)

    def get_list_filter(self, request: HttpRequest) -> list[Any]:
        return ["event_type"] if is_partner_staff(request.user) else list(self.list_filter)

    @admin.action(description="Replay (same webhook-id, to every enabled endpoint)")
    def replay(self, request: HttpRequest, queryset: QuerySet) -> None:
        if not has_role(request.user, *WEBHOOK_ACTION_ROLES):
            self.message_user(request, "Your roles do not allow replaying.", messages.ERROR)
            return
        try:
            count = services.messages_replay(
                actor=Actor.of_user(request.user), messages=list(queryset)
            )
        except ApplicationError as exc:
            self.message_user(request, exc.detail, messages.ERROR)
            return
        self.message_user(request, f"{count} deliveries queued again.", messages.SUCCESS)


@admin.register(PartnerWebhookAttempt)
class PartnerWebhookAttemptAdmin(ReadOnlyAdmin):
    list_display = [
        "delivery",
        "number",
        "started_at",
        "response_status",
        "latency_ms",
        "succeeded",
        "retryable",
        "error",
    ]
    list_filter = ["succeeded", "retryable"]
    list_select_related = ["delivery"]
    search_fields = ["=delivery__message__id"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[PartnerWebhookAttempt]:
        return partner_scope(
            super().get_queryset(request),
            request.user,
            lambda partner: Q(delivery__message__partner=partner),
        )


@admin.register(PartnerWebhookDelivery)
class PartnerWebhookDeliveryAdmin(ReadOnlyAdmin):
    list_display = ["message", "endpoint", "status", "attempts", "next_attempt_at", "last_error"]
    list_filter = ["status"]
    list_select_related = ["message", "endpoint"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[PartnerWebhookDelivery]:
        return partner_scope(
            super().get_queryset(request),
            request.user,
            lambda partner: Q(message__partner=partner),
        )
