"""The platform's signing keys in the admin, for Security: read-only rows, with rotate and
revoke actions that file two-person approval requests (licensing.approvals); once another
Security member approves one, it goes through audit.signing_keys (each change recorded)."""

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse

from accounts.approval_services import approval_next_step, approval_request
from licensing.approvals import REVOKE, ROTATE
from marketplace.admin.helpers import reason_action
from marketplace.models import SigningKey, SigningKeyStatus
from marketplace.roles import SECURITY, has_role


@admin.register(SigningKey)
class SigningKeyAdmin(admin.ModelAdmin):
    """The platform's signing keys, read-only: they are made, rotated and revoked only by the
    key-store services, which audit each change. The sealed private key is never shown."""

    list_display = [
        "kid",
        "purpose",
        "algorithm",
        "backend",
        "status",
        "created_at",
        "retired_at",
        "revoked_at",
        "revoked_reason",
    ]
    list_filter = ["purpose", "status"]
    search_fields = ["=kid"]
    fields = list_display
    readonly_fields = list_display
    actions = ["rotate", "revoke"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # the key store creates keys, on first use or by rotation

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # revoke instead: checkpoints, exports and licenses name their key

    def has_security_permission(self, request: HttpRequest) -> bool:
        return has_role(request.user, SECURITY)

    def _filed(self, request: HttpRequest, filed: Any) -> None:
        self.message_user(request, f"{filed.summary} {approval_next_step(filed)}", messages.INFO)

    @admin.action(
        description="Rotate the keys of the selected purposes (asks for approval)…",
        permissions=["security"],
    )
    def rotate(self, request: HttpRequest, queryset: QuerySet[SigningKey]) -> HttpResponse | None:
        # One request per purpose, whatever the number of its keys selected.
        one_per_purpose = {key.purpose: key.pk for key in queryset.order_by("-pk")}
        return reason_action(
            self,
            request,
            queryset.filter(pk__in=one_per_purpose.values()),
            title="Rotate signing keys (a new active key; another Security member approves)",
            apply=lambda key, reason: self._filed(
                request,
                approval_request(
                    kind=ROTATE,
                    params={"purpose": key.purpose},
                    reason=reason,
                    requested_by=request.user,
                ),
            ),
            done="{count} rotation(s) filed for approval.",
        )

    @admin.action(description="Revoke selected keys (asks for approval)…", permissions=["security"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[SigningKey]) -> HttpResponse | None:
        # Revoking again would change nothing: the page lists only the keys it applies to.
        return reason_action(
            self,
            request,
            queryset.exclude(status=SigningKeyStatus.REVOKED),
            title="Revoke signing keys (what they signed no longer verifies; another Security "
            "member approves)",
            apply=lambda key, reason: self._filed(
                request,
                approval_request(
                    kind=REVOKE,
                    params={"kid": key.kid, "reason": reason[:500]},
                    reason=reason,
                    requested_by=request.user,
                ),
            ),
            done="{count} revocation(s) filed for approval.",
        )
