"""The Kernel fan-out's cursor: how far the Kernel has acknowledged the chain, the failures since,
and a button that pushes at once (audit.fanout.kernel_push_now, the replay action of the outbox).

The page is the cursor's state rather than a list: there is one row, and before the first push
there is none, yet the backlog is still worth seeing.
"""

from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.decorators import method_decorator
from django.views.decorators.http import require_POST

from audit.fanout import KernelPushFailed, kernel_cursor_state, kernel_push_now
from audit.models import KernelCursor
from marketplace.admin.helpers import ReadOnlyAdmin
from marketplace.roles import SECURITY, has_role


@admin.register(KernelCursor)
class KernelCursorAdmin(ReadOnlyAdmin):
    # Nothing here is changed in bulk.
    actions = None

    def has_push_permission(self, request: HttpRequest) -> bool:
        return self.has_view_permission(request) and has_role(request.user, SECURITY)

    def get_urls(self) -> list[URLPattern]:
        wrap = self.admin_site.admin_view
        return [
            path("", wrap(self.changelist_view), name="audit_kernelcursor_changelist"),
            path("push/", wrap(self.push_view), name="audit_kernelcursor_push"),
        ]

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        context = {
            **self.admin_site.each_context(request),
            "title": "Kernel fan-out",
            "opts": self.opts,
            "state": kernel_cursor_state(),
            "kernel_url": settings.KERNEL_URL,
            "can_push": self.has_push_permission(request),
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/audit/kernel_cursor.html", context)

    @method_decorator(require_POST)
    def push_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_push_permission(request):
            raise PermissionDenied
        back = HttpResponseRedirect(reverse("admin:audit_kernelcursor_changelist"))
        if not settings.KERNEL_URL:
            self.message_user(
                request,
                "No Kernel is configured (MARKETPLACE_KERNEL_URL is empty): nothing was pushed.",
                messages.WARNING,
            )
            return back
        before = kernel_cursor_state().acknowledged_sequence
        try:
            state = kernel_push_now()
        except KernelPushFailed as exc:
            self.message_user(
                request,
                f"The push failed (attempt {exc.attempts}): {exc}. The worker tries again in "
                f"{exc.retry_in:.0f} s.",
                messages.ERROR,
            )
            return back
        if state.backlog:
            # kernel_push_now found another push holding the cursor: that one carries on.
            self.message_user(
                request,
                f"Another push is running: the Kernel has acknowledged through "
                f"#{state.acknowledged_sequence}, {state.backlog} event(s) still to send.",
                messages.WARNING,
            )
        else:
            sent = state.acknowledged_sequence - before
            self.message_user(
                request,
                f"Pushed: the Kernel has acknowledged through #{state.acknowledged_sequence} "
                f"({sent} event(s) newly acknowledged); nothing is waiting.",
                messages.SUCCESS,
            )
        return back
