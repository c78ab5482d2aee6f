"""Stored webhook events, their attempts, and replay."""

from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import URLPattern, path, reverse
from django.utils.decorators import method_decorator
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.views.decorators.http import require_POST

from marketplace.actors import Actor
from marketplace.admin.helpers import ReadOnlyAdmin
from marketplace.roles import may_take_order_action
from orders import services
from orders.admin.common import (
    order_admin_link,
    pretty_json,
    utc,
)
from orders.models import WebhookEvent, WebhookStatus

REPLAYABLE_EVENTS = (WebhookStatus.FAILED, WebhookStatus.DEAD, WebhookStatus.RECEIVED)


@admin.register(WebhookEvent)
class WebhookEventAdmin(ReadOnlyAdmin):
    list_display = ["__str__", "type", "status", "attempts", "order_link", "received_at"]
    list_filter = ["status", "type"]
    search_fields = ["=event_id"]
    search_help_text = "An event id (evt_…)."
    show_facets = admin.ShowFacets.NEVER
    actions = ["replay"]
    fieldsets = [
        (None, {"fields": ["event_id", "type", "livemode", "order_link", "received_at"]}),
        (
            "Processing",
            {
                "fields": [
                    "status",
                    "outcome",
                    "attempts",
                    "next_attempt_at",
                    "processed_at",
                    "last_error_pretty",
                    "attempt_table",
                ]
            },
        ),
        ("Body", {"fields": ["payload_pretty", "raw_body"]}),
    ]
    readonly_fields = [
        "event_id",
        "type",
        "livemode",
        "order_link",
        "received_at",
        "status",
        "outcome",
        "attempts",
        "next_attempt_at",
        "processed_at",
        "last_error_pretty",
        "attempt_table",
        "payload_pretty",
        "raw_body",
    ]

    @admin.display(description="Order")
    def order_link(self, event: WebhookEvent) -> SafeString | str:
        return order_admin_link(event.order_id)

    @admin.display(description="Payload")
    def payload_pretty(self, event: WebhookEvent) -> SafeString | str:
        return pretty_json(event.payload) if event.payload is not None else "—"

    @admin.display(description="Last error")
    def last_error_pretty(self, event: WebhookEvent) -> SafeString | str:
        if not event.last_error:
            return "—"
        return format_html('<pre class="orders-json">{}</pre>', event.last_error)

    @admin.display(description="Attempts made")
    def attempt_table(self, event: WebhookEvent) -> SafeString | str:
        attempts = list(event.attempt_log.order_by("number"))
        if not attempts:
            return "None yet."
        rows = format_html_join(
            "",
            '<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><pre class="orders-json">{}'
            "</pre></td></tr>",
            (
                (
                    attempt.number,
                    utc(attempt.started_at),
                    utc(attempt.finished_at),
                    "yes" if attempt.succeeded else "no",
                    attempt.detail,
                )
                for attempt in attempts
            ),
        )
        return format_html(
            '<table id="webhook-attempts"><thead><tr><th>#</th><th>Started (UTC)</th>'
            "<th>Finished (UTC)</th><th>Succeeded</th><th>Detail</th></tr></thead>"
            "<tbody>{}</tbody></table>",
            rows,
        )

    def has_replay_permission(self, request: HttpRequest) -> bool:
        return may_take_order_action(request.user, "replay_webhook")

    def get_urls(self) -> list[URLPattern]:
        wrap = self.admin_site.admin_view
        return [
            path(
                "<path:object_id>/replay/",
                wrap(self.replay_view),
                name="orders_webhookevent_replay",
            ),
            *super().get_urls(),
        ]

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        event = self.get_object(request, unquote(object_id))
        extra_context = {
            **(extra_context or {}),
            "can_replay": event is not None
            and event.status in REPLAYABLE_EVENTS
            and self.has_replay_permission(request),
        }
        return super().change_view(request, object_id, form_url, extra_context)

    @method_decorator(require_POST)
    def replay_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        if not self.has_replay_permission(request):
            raise PermissionDenied
        event = self.get_object(request, unquote(object_id))
        if event is None:
            raise Http404(f"There is no webhook event {object_id}.")
        self._replay(request, [event])
        return HttpResponseRedirect(reverse("admin:orders_webhookevent_change", args=[event.pk]))

    def _replay(self, request: HttpRequest, events: list[WebhookEvent]) -> None:
        actor = Actor.of_user(request.user)
        for event in events:
            if event.status not in REPLAYABLE_EVENTS:
                self.message_user(
                    request,
                    f"{event}: {event.get_status_display().lower()}, nothing to replay.",
                    messages.INFO,
                )
                continue
            status = services.webhook_event_replay(event_pk=event.pk, actor=actor)
            event.refresh_from_db()
            level = (
                messages.SUCCESS
                if status in (WebhookStatus.PROCESSED, WebhookStatus.IGNORED)
                else messages.ERROR
            )
            detail = event.outcome if level == messages.SUCCESS else event.last_error
            detail = (detail.strip().splitlines() or [""])[-1]
            self.message_user(request, f"{event}: replayed, now {status}. {detail}", level)

    @admin.action(description="Replay selected failed or dead events", permissions=["replay"])
    def replay(self, request: HttpRequest, queryset: QuerySet[WebhookEvent]) -> None:
        self._replay(request, list(queryset.order_by("pk")))
