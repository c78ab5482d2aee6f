"""Pending approvals and break-glass grants in the admin (imported by accounts.admin).

"Pending approvals" lists the requests of the kinds the staff member may decide (a role the
kind names; superusers every kind), pending ones first by default; a request's page has Approve
and Reject, which call accounts.approval_services and show its refusals as error messages. The
list also shows the maintenance switch and files the request to turn it on or off.
"""

from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count, Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.decorators import method_decorator
from django.views.decorators.http import require_POST

from accounts.approval_services import (
    approval_approve,
    approval_next_step,
    approval_reject,
    approval_request,
)
from accounts.approvals import kinds_decided_by, may_decide
from accounts.breakglass import breakglass_revoke
from accounts.models import (
    ApprovalDecisionKind,
    ApprovalRequest,
    ApprovalStatus,
    BreakGlassGrant,
)
from marketplace.actors import Actor
from marketplace.admin.helpers import ReadOnlyAdmin
from marketplace.exceptions import ApplicationError
from marketplace.maintenance import maintenance_switch_on
from marketplace.roles import SECURITY, has_role


class StatusFilter(admin.SimpleListFilter):
    """By status, pending unless another is chosen: the page is the queue of what waits."""

    title = "status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [*ApprovalStatus.choices, ("all", "All")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value() or ApprovalStatus.PENDING
        return queryset if value == "all" else queryset.filter(status=value)

    def choices(self, changelist: Any) -> Any:
        current = self.value() or ApprovalStatus.PENDING
        for lookup, title in self.lookup_choices:
            yield {
                "selected": current == lookup,
                "query_string": changelist.get_query_string({self.parameter_name: lookup}),
                "display": title,
            }


@admin.register(ApprovalRequest)
class ApprovalRequestAdmin(ReadOnlyAdmin):
    list_display = [
        "kind",
        "summary",
        "requester",
        "requested_at",
        "expires_at",
        "status",
        "approvals",
    ]
    list_filter = [StatusFilter, "kind"]
    list_display_links = ["kind", "summary"]
    search_fields = ["=id", "=requested_by__email"]
    show_facets = admin.ShowFacets.NEVER
    actions = None
    fields = [
        "id",
        "kind",
        "summary",
        "reason",
        "requester",
        "requested_at",
        "expires_at",
        "threshold",
        "status",
        "applied_at",
        "outcome",
        "error",
        "decisions_made",
    ]
    readonly_fields = fields
    change_list_template = "admin/accounts/approvalrequest/change_list.html"
    change_form_template = "admin/accounts/approvalrequest/change_form.html"

    def get_queryset(self, request: HttpRequest) -> QuerySet[ApprovalRequest]:
        queryset = (
            super()
            .get_queryset(request)
            .select_related("requested_by")
            .annotate(
                approval_count=Count(
                    "decisions", filter=Q(decisions__decision=ApprovalDecisionKind.APPROVE)
                )
            )
        )
        if request.user.is_superuser:
            return queryset
        return queryset.filter(kind__in=kinds_decided_by(request.user))

    @admin.display(description="Requested by", ordering="requested_by__email")
    def requester(self, obj: ApprovalRequest) -> str:
        return obj.requested_by.email

    @admin.display(description="Approvals")
    def approvals(self, obj: ApprovalRequest) -> str:
        count = getattr(obj, "approval_count", None)
        if count is None:
            count = obj.decisions.filter(decision=ApprovalDecisionKind.APPROVE).count()
        return f"{count} of {obj.approvals_needed}"

    @admin.display(description="Decisions")
    def decisions_made(self, obj: ApprovalRequest) -> str:
        lines = [
            f"{d.get_decision_display()} by {d.by.email} at {d.at:%Y-%m-%d %H:%M:%S}"
            + (f": {d.note}" if d.note else "")
            for d in obj.decisions.select_related("by")
        ]
        return "\n".join(lines) or "None yet"

    # --- Pages ---

    def get_urls(self) -> list[URLPattern]:
        wrap = self.admin_site.admin_view
        return [
            path(
                "<path:object_id>/approve/",
                wrap(self.approve_view),
                name="accounts_approvalrequest_approve",
            ),
            path(
                "<path:object_id>/reject/",
                wrap(self.reject_view),
                name="accounts_approvalrequest_reject",
            ),
            path(
                "maintenance/",
                wrap(self.maintenance_view),
                name="accounts_approvalrequest_maintenance",
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
        obj = self.get_object(request, unquote(object_id))
        if obj is not None:
            open_ = obj.status == ApprovalStatus.PENDING and not obj.is_expired_at(timezone.now())
            extra_context = {
                **(extra_context or {}),
                "can_decide": open_ and may_decide(request.user, obj.kind),
                "is_own": obj.requested_by_id == request.user.pk,
            }
        return super().change_view(request, object_id, form_url, extra_context)

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        on = maintenance_switch_on()
        extra_context = {
            **(extra_context or {}),
            "maintenance_switch": on,
            "maintenance_forced": bool(settings.MAINTENANCE_MODE),
            "maintenance_may_request": may_decide(request.user, "maintenance.on"),
            "maintenance_kind": "maintenance.off" if on else "maintenance.on",
        }
        return super().changelist_view(request, extra_context)

    def _request_or_404(self, request: HttpRequest, object_id: str) -> ApprovalRequest:
        # Not narrowed to the kinds the user decides: the service refuses the others, and
        # says why.
        try:
            obj = ApprovalRequest.objects.filter(pk=unquote(object_id)).first()
        except (ValidationError, ValueError):  # not a uuid: no such request either
            obj = None
        if obj is None:
            raise Http404(f"There is no approval request {object_id}.")
        return obj

    def _back(self, request: HttpRequest, obj: ApprovalRequest) -> HttpResponseRedirect:
        if self.get_queryset(request).filter(pk=obj.pk).exists():
            return HttpResponseRedirect(
                reverse("admin:accounts_approvalrequest_change", args=[obj.pk])
            )
        return HttpResponseRedirect(reverse("admin:accounts_approvalrequest_changelist"))

    @method_decorator(require_POST)
    def approve_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        obj = self._request_or_404(request, object_id)
        try:
            done = approval_approve(obj.pk, by=request.user, note=request.POST.get("note", ""))
        except ApplicationError as exc:
            self.message_user(request, f"Not approved: {exc.detail}", messages.ERROR)
            return self._back(request, obj)
        if done.status == ApprovalStatus.APPLIED:
            self.message_user(request, f"Approved and applied: {done.summary}", messages.SUCCESS)
        elif done.status == ApprovalStatus.FAILED:
            self.message_user(
                request, f"Approved, but applying it failed: {done.error}", messages.ERROR
            )
        else:
            self.message_user(request, "Approved; it waits for more approvals.", messages.SUCCESS)
        return self._back(request, obj)

    @method_decorator(require_POST)
    def reject_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        obj = self._request_or_404(request, object_id)
        try:
            approval_reject(obj.pk, by=request.user, reason=request.POST.get("reason", ""))
        except ApplicationError as exc:
            self.message_user(request, f"Not rejected: {exc.detail}", messages.ERROR)
        else:
            self.message_user(request, "Rejected: nothing will change.", messages.SUCCESS)
        return self._back(request, obj)

    @method_decorator(require_POST)
    def maintenance_view(self, request: HttpRequest) -> HttpResponse:
        kind = request.POST.get("kind", "")
        if kind not in ("maintenance.on", "maintenance.off"):
            raise Http404("Turn maintenance on or off.")
        if not may_decide(request.user, kind):
            raise PermissionDenied
        try:
            filed = approval_request(
                kind=kind,
                params={},
                reason=request.POST.get("reason", ""),
                requested_by=request.user,
            )
        except ApplicationError as exc:
            self.message_user(request, f"Nothing filed: {exc.detail}", messages.ERROR)
        else:
            self.message_user(request, approval_next_step(filed), messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:accounts_approvalrequest_changelist"))


@admin.register(BreakGlassGrant)
class BreakGlassGrantAdmin(ReadOnlyAdmin):
    """Break-glass grants, read-only (filed with `breakglass_grant`, started by an approval),
    with their window and uses; Revoke ends one at once, without an approval."""

    list_display = [
        "user",
        "requested_by",
        "hours",
        "approval_status",
        "active_from",
        "active_until",
        "revoked_at",
        "uses",
        "last_used_at",
    ]
    list_select_related = ["user", "requested_by", "approval"]
    list_filter = [("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["=user__email"]
    fields = [
        "user",
        "requested_by",
        "reason",
        "hours",
        "approval",
        "approval_status",
        "created_at",
        "active_from",
        "active_until",
        "revoked_at",
        "uses",
        "last_used_at",
    ]
    readonly_fields = fields
    actions = ["revoke"]

    @admin.display(description="Approval")
    def approval_status(self, grant: BreakGlassGrant) -> str:
        return grant.approval.get_status_display() if grant.approval else "—"

    def has_security_permission(self, request: HttpRequest) -> bool:
        return has_role(request.user, SECURITY)

    @admin.action(description="Revoke selected grants (at once)", permissions=["security"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[BreakGlassGrant]) -> None:
        actor = Actor.of_user(request.user)
        count = sum(
            1
            for pk in queryset.values_list("pk", flat=True)
            if breakglass_revoke(grant_pk=pk, actor=actor)
        )
        self.message_user(request, f"{count} grant(s) revoked.", messages.SUCCESS)
