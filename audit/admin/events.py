"""The event list and page, the verify page and the checkpoint button."""

import json
import time
from datetime import UTC
from typing import Any

from django.apps import apps
from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, URLPattern, path, reverse
from django.utils import timezone
from django.utils.decorators import method_decorator
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.views.decorators.http import require_POST

from audit.admin.changelist import (
    USER_ACTORS,
    ActionFilter,
    ActorFilter,
    AuditEventChangeList,
    ChainPaginator,
    DateRangeFilter,
    SubjectFilter,
    SubjectTypeFilter,
    emails_by_uuid,
    events_url,
    search_q,
)
from audit.chain import format_time
from audit.checkpoints import checkpoint_create
from audit.models import AuditEvent
from audit.verify import chain_verify
from marketplace.admin.helpers import ReadOnlyAdmin
from marketplace.keystore import KeyStoreError


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    # Append-only records: no bulk action applies to them.
    actions = None
    list_display = ["place", "when", "actor", "action", "subject"]
    list_filter = [
        ActionFilter,
        "actor_type",
        ActorFilter,
        SubjectTypeFilter,
        SubjectFilter,
        ("occurred_at", DateRangeFilter),
    ]
    # Searched by get_search_results, on whole values only; a search field has to be named for
    # the admin to show the box.
    search_fields = ["=subject_id"]
    search_help_text = "An exact subject id, actor id or email, or an event's #sequence."
    # Newest inserted first (the primary key); any other order would sort the whole table.
    sortable_by: list[str] = []
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    paginator = ChainPaginator
    list_per_page = 50
    fieldsets = [
        (None, {"fields": ["place", "occurred", "action"]}),
        ("Actor", {"fields": ["actor_type", "actor_id", "actor_user"]}),
        ("Subject", {"fields": ["subject_type", "subject_id"]}),
        ("Data", {"fields": ["data_pretty"]}),
        ("Chain", {"fields": ["prev_hash", "hash"]}),
    ]
    readonly_fields = [
        "place",
        "occurred",
        "action",
        "actor_type",
        "actor_id",
        "actor_user",
        "subject_type",
        "subject_id",
        "data_pretty",
        "prev_hash",
        "hash",
    ]
    # Only what the filters and links produce, all on indexed columns: a hand-made URL cannot
    # ask for a lookup that reads the whole table (data__icontains, say).
    allowed_lookups = frozenset(
        {
            "action",
            "actor_type__exact",
            "actor_id",
            "subject_type",
            "subject_id",
            "occurred_at__gte",
            "occurred_at__lt",
            "occurred_at__from",
            "occurred_at__to",
        }
    )

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return AuditEventChangeList

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest) -> bool:
        return lookup in self.allowed_lookups

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        return queryset.filter(search_q(term)), False

    @admin.display(description="Sequence")
    def place(self, event: AuditEvent) -> str:
        # An event waits a moment for the sealer (audit.sealer) to give it its place.
        return str(event.sequence) if event.sequence is not None else "unsealed"

    @admin.display(description="Time (UTC)")
    def when(self, event: AuditEvent) -> str:
        return event.occurred_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")

    @admin.display(description="Occurred at")
    def occurred(self, event: AuditEvent) -> str:
        return format_time(event.occurred_at)  # as the hashed record spells it

    @admin.display(description="Actor")
    def actor(self, event: AuditEvent) -> SafeString:
        who = getattr(event, "actor_email", "") or event.actor_id or "—"
        return format_html(
            '{} <a href="{}">{}</a>',
            event.get_actor_type_display(),
            events_url(actor_type__exact=event.actor_type, actor_id=event.actor_id),
            who,
        )

    @admin.display(description="Subject")
    def subject(self, event: AuditEvent) -> SafeString:
        return format_html(
            '<a href="{}">{} {}</a>',
            events_url(subject_type=event.subject_type, subject_id=event.subject_id),
            event.subject_type,
            event.subject_id,
        )

    @admin.display(description="User")
    def actor_user(self, event: AuditEvent) -> str:
        if event.actor_type not in USER_ACTORS:
            return "—"
        return emails_by_uuid({event.actor_id}).get(event.actor_id, "no such user any more")

    @admin.display(description="Data")
    def data_pretty(self, event: AuditEvent) -> SafeString:
        return format_html(
            '<pre class="audit-data">{}</pre>',
            json.dumps(event.data, indent=2, sort_keys=True, ensure_ascii=False),
        )

    # --- Verification and checkpoints ---

    def has_verify_permission(self, request: HttpRequest) -> bool:
        # Whoever may read the log may check that it is intact: the result reveals nothing
        # the log does not.
        return self.has_view_permission(request)

    def has_checkpoint_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("audit.add_checkpoint")

    def get_urls(self) -> list[URLPattern]:
        wrap = self.admin_site.admin_view
        return [
            path("verify/", wrap(self.verify_view), name="audit_auditevent_verify"),
            path("checkpoint/", wrap(self.checkpoint_view), name="audit_auditevent_checkpoint"),
            *super().get_urls(),
        ]

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        extra_context = {
            **(extra_context or {}),
            "can_verify": self.has_verify_permission(request),
            "can_sign_checkpoint": self.has_checkpoint_permission(request),
        }
        return super().changelist_view(request, extra_context)

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        event = AuditEvent.objects.filter(pk=object_id).first() if object_id.isdigit() else None
        if event is not None:
            extra_context = {
                **(extra_context or {}),
                "subject_events_url": events_url(
                    subject_type=event.subject_type, subject_id=event.subject_id
                ),
                "actor_events_url": events_url(
                    actor_type__exact=event.actor_type, actor_id=event.actor_id
                ),
                "subject_admin_url": self._subject_admin_url(request, event),
            }
        return super().change_view(request, object_id, form_url, extra_context)

    def _subject_admin_url(self, request: HttpRequest, event: AuditEvent) -> str:
        """The subject's own admin page, when it has one the viewer may open. Subjects are
        named by model name (audit.services), so a registered model of that name is it."""
        for model in apps.get_models():
            if model._meta.model_name != event.subject_type:
                continue
            if not self.admin_site.is_registered(model):
                return ""
            if not self.admin_site.get_model_admin(model).has_view_or_change_permission(request):
                return ""
            opts = model._meta
            try:
                return reverse(
                    f"admin:{opts.app_label}_{opts.model_name}_change", args=[event.subject_id]
                )
            except NoReverseMatch:
                return ""
        return ""

    def verify_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_verify_permission(request):
            raise PermissionDenied
        started = time.monotonic()
        report = chain_verify()
        elapsed = time.monotonic() - started
        failure = report.failure
        failure_url = ""
        bad_sequence = failure.sequence if failure is not None else None
        bad = AuditEvent.objects.filter(sequence=bad_sequence).values_list("pk", flat=True)
        if bad_sequence is not None and (bad_pk := bad.first()) is not None:
            failure_url = reverse("admin:audit_auditevent_change", args=[bad_pk])
        last = AuditEvent.objects.filter(sequence=report.last_sequence).values_list("pk", flat=True)
        context = {
            **self.admin_site.each_context(request),
            "title": "Verify the audit chain",
            "opts": self.opts,
            "report": report,
            "failure": failure,
            "failure_url": failure_url,
            "last_url": (
                reverse("admin:audit_auditevent_change", args=[last_pk])
                if report.last_sequence and (last_pk := last.first()) is not None
                else ""
            ),
            "elapsed": elapsed,
            "checked_at": timezone.now(),
            "can_sign_checkpoint": self.has_checkpoint_permission(request),
        }
        return TemplateResponse(request, "admin/audit/verify.html", context)

    @method_decorator(require_POST)
    def checkpoint_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_checkpoint_permission(request):
            raise PermissionDenied
        try:
            checkpoint = checkpoint_create()
        except KeyStoreError as exc:
            self.message_user(
                request, f"No checkpoint was signed: {exc}. Check the audit key.", messages.ERROR
            )
            return HttpResponseRedirect(reverse("admin:audit_auditevent_changelist"))
        if checkpoint is None:
            self.message_user(
                request,
                "Nothing to sign: no event was appended since the last checkpoint.",
                messages.INFO,
            )
        else:
            self.message_user(
                request,
                f"Checkpoint signed at event #{checkpoint.sequence} with key {checkpoint.key_id}.",
                messages.SUCCESS,
            )
        return HttpResponseRedirect(reverse("admin:audit_checkpoint_changelist"))
