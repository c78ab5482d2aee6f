"""Preview sessions, read-only: find one, revoke it; and "Isolate pool" (the runbooks' breakout
response) for one SKU at once, or for every SKU through a second Security member."""

import uuid
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.timesince import timesince

from accounts.approval_services import approval_next_step, approval_request
from catalog.admin.service_errors import add_service_error
from catalog.models import Sku
from catalog.partner_scope import is_partner_staff
from marketplace.actors import Actor
from marketplace.admin.helpers import reason_action
from marketplace.exceptions import ApplicationError
from marketplace.roles import may_take_preview_action
from previews.admin.common import of_their_skus, short_digest
from previews.admin.materials import sku_preview_url
from previews.approvals import ISOLATE_ALL
from previews.models import PreviewPause, PreviewSession
from previews.services import preview_revoke, previews_isolate
from previews.services.upkeep import REASON_MAX

# What Partner staff are not shown of a session: who the buyer is, and where the sandbox runs.
_NOT_THEIRS = {"buyer_email", "environment_id", "host", "endpoint"}


@admin.register(PreviewSession)
class PreviewSessionAdmin(admin.ModelAdmin):
    list_display = [
        "short_id",
        "status",
        "sku_slug",
        "buyer_email",
        "provisioner",
        "created_at",
        "age",
        "expires_at",
        "material_version",
        "end_reason",
    ]
    list_filter = [
        "status",
        "end_reason",
        "provisioner",
        ("sku", admin.RelatedOnlyFieldListFilter),
    ]
    # The columns' rows, fetched with the page: its queries do not grow with its length.
    list_select_related = ["sku", "buyer", "material"]
    search_fields = ["sku__slug", "=buyer__email"]
    search_help_text = "A session id, a SKU slug (or part of it), or a buyer's email."
    show_facets = admin.ShowFacets.NEVER
    actions = ["revoke"]
    fields = [
        "id",
        "status",
        "sku_link",
        "buyer_email",
        "kind",
        "material_display",
        "provisioner",
        "environment_id",
        "host",
        "endpoint",
        "created_at",
        "started_at",
        "ready_at",
        "expires_at",
        "ended_at",
        "end_reason",
        "end_detail",
        "torn_down_at",
        "requests_served",
        "bytes_served",
    ]
    readonly_fields = fields
    change_list_template = "previews/admin/previewsession_change_list.html"

    # --- Partner staff: their partner's SKUs' sessions, without the buyers ---

    def get_queryset(self, request: HttpRequest) -> QuerySet[PreviewSession]:
        return of_their_skus(super().get_queryset(request), request)

    def get_list_display(self, request: HttpRequest) -> list[str]:
        if is_partner_staff(request.user):
            return [name for name in self.list_display if name not in _NOT_THEIRS]
        return list(self.list_display)

    def get_search_fields(self, request: HttpRequest) -> list[str]:
        if is_partner_staff(request.user):
            return [name for name in self.search_fields if "buyer" not in name]
        return list(self.search_fields)

    def get_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        if is_partner_staff(request.user):
            return [name for name in self.fields if name not in _NOT_THEIRS]
        return list(self.fields)

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest | None = None) -> bool:
        # `?buyer=<id>` would tell them which previews share a buyer.
        if request is not None and is_partner_staff(request.user) and lookup.startswith("buyer"):
            return False
        return super().lookup_allowed(lookup, value, request)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        term = search_term.strip()
        try:
            session_id = uuid.UUID(term)
        except ValueError:
            return super().get_search_results(request, queryset, term)
        return queryset.filter(pk=session_id), False

    # --- Who may do what: sessions change only through the services ---

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        return may_take_preview_action(request.user, "revoke_session")

    def has_isolate_permission(self, request: HttpRequest) -> bool:
        return may_take_preview_action(request.user, "isolate_pool")

    # --- Columns and fields ---

    @admin.display(description="Session", ordering="id")
    def short_id(self, session: PreviewSession) -> str:
        return str(session.id)[:8]

    @admin.display(description="SKU", ordering="sku__slug")
    def sku_slug(self, session: PreviewSession) -> str:
        return session.sku.slug

    @admin.display(description="SKU")
    def sku_link(self, session: PreviewSession) -> SafeString:
        return format_html('<a href="{}">{}</a>', sku_preview_url(session.sku_id), session.sku)

    @admin.display(description="Buyer", ordering="buyer__email")
    def buyer_email(self, session: PreviewSession) -> str:
        return session.buyer.email

    @admin.display(description="Age", ordering="created_at")
    def age(self, session: PreviewSession) -> str:
        return timesince(session.created_at)

    @admin.display(description="Material", ordering="material__version")
    def material_version(self, session: PreviewSession) -> str:
        return f"v{session.material.version}"

    @admin.display(description="Material")
    def material_display(self, session: PreviewSession) -> str:
        material = session.material
        return f"v{material.version} ({material.kind}), digest {short_digest(material.digest)}"

    # --- Actions and pages ---

    @admin.action(description="Revoke selected sessions…", permissions=["revoke"])
    def revoke(
        self, request: HttpRequest, queryset: QuerySet[PreviewSession]
    ) -> HttpResponse | None:
        # Revoking an ended session changes nothing: the page lists only the open ones.
        return reason_action(
            self,
            request,
            queryset.open(),
            title="Revoke preview sessions (their links answer 410 at once; the sandboxes are "
            "torn down)",
            apply=lambda session, reason: preview_revoke(
                session_id=session.pk, reason=reason, actor=Actor.of_user(request.user)
            ),
            done="{count} session(s) revoked.",
        )

    def get_urls(self) -> list[URLPattern]:
        wrap = self.admin_site.admin_view
        return [
            path("isolate/", wrap(self.isolate_view), name="previews_previewsession_isolate"),
            *super().get_urls(),
        ]

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        extra_context = {
            **(extra_context or {}),
            "may_isolate": self.has_isolate_permission(request),
            "pauses_in_force": list(
                of_their_skus(PreviewPause.objects.filter(lifted_at__isnull=True), request)
                .select_related("sku")
                .order_by("created_at")
            ),
        }
        return super().changelist_view(request, extra_context)

    def isolate_view(self, request: HttpRequest) -> HttpResponse:
        """Isolate pool: one SKU's open sessions revoked (and new ones paused) at once, or every
        SKU's once another Security member approves (`previews.isolate_all`)."""
        if not self.has_isolate_permission(request):
            raise PermissionDenied
        form = IsolateForm(request.POST or None)
        if request.method == "POST" and form.is_valid() and self._isolate(request, form):
            return HttpResponseRedirect(reverse("admin:previews_previewsession_changelist"))
        context = {
            **self.admin_site.each_context(request),
            "title": "Isolate the preview pool",
            "opts": self.model._meta,
            "form": form,
            "open_sessions": PreviewSession.objects.open().count(),
        }
        return TemplateResponse(request, "previews/admin/isolate.html", context)

    def _isolate(self, request: HttpRequest, form: "IsolateForm") -> bool:
        """Isolates as the form says and reports it; False (with the refusal at the form's
        fields) when the service refused."""
        sku, reason, pause = (form.cleaned_data[name] for name in ("sku", "reason", "pause"))
        try:
            if sku is None:
                filed = approval_request(
                    kind=ISOLATE_ALL,
                    params={"reason": reason, "pause": pause},
                    reason=reason,
                    requested_by=request.user,
                )
                self.message_user(
                    request, f"{filed.summary} {approval_next_step(filed)}", messages.INFO
                )
                return True
            done = previews_isolate(
                sku_id=sku.pk,
                reason=reason,
                actor=Actor.of_user(request.user),
                pause=pause,
                by=request.user,
            )
        except ApplicationError as exc:
            add_service_error(form, exc, field="reason")
            return False
        paused = "new sessions are paused until the pause is lifted" if pause else "not paused"
        self.message_user(
            request,
            f"{sku.slug} isolated: {done.revoked} session(s) revoked; {paused}.",
            messages.SUCCESS,
        )
        return True


class IsolateForm(forms.Form):
    sku = forms.ModelChoiceField(
        queryset=Sku.objects.order_by("slug"),
        required=False,
        label="SKU",
        empty_label="Every SKU (asks another Security member to approve)",
        help_text="One SKU is isolated at once; every SKU waits for a second Security member.",
    )
    reason = forms.CharField(
        max_length=REASON_MAX,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 80}),
        help_text="Kept in the audit log, and shown as the pause's reason.",
    )
    pause = forms.BooleanField(
        required=False,
        initial=True,
        label="Pause new sessions",
        help_text="New previews of the SKU (or of every SKU) are refused until the pause is "
        "lifted (Lift on the Preview pauses page).",
    )
