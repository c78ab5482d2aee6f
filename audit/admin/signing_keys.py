"""The platform's signing keys in the admin, for Security: read-only rows, with rotate and
revoke actions that go through audit.signing_keys (each change recorded)."""

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse

from audit.signing_keys import signing_key_revoke, signing_key_rotate
from marketplace.actors import Actor
from marketplace.admin.helpers import reason_action
from marketplace.keystore import KeyStoreError
from marketplace.models import SigningKey, SigningKeyPurpose, SigningKeyStatus
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

    @admin.action(
        description="Rotate the keys of the selected purposes (new active key)",
        permissions=["security"],
    )
    def rotate(self, request: HttpRequest, queryset: QuerySet[SigningKey]) -> None:
        actor = Actor.of_user(request.user)
        purposes = sorted(set(queryset.values_list("purpose", flat=True)))
        for purpose in purposes:
            try:
                new, previous = signing_key_rotate(purpose=SigningKeyPurpose(purpose), actor=actor)
            except KeyStoreError as exc:
                self.message_user(request, f"{purpose}: not rotated: {exc}", messages.ERROR)
                continue
            retired = f"; {previous.kid} retired (it still verifies)" if previous else ""
            self.message_user(
                request, f"{purpose}: {new.kid} is now the active key{retired}.", messages.SUCCESS
            )

    @admin.action(description="Revoke selected keys…", permissions=["security"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[SigningKey]) -> HttpResponse | None:
        # Revoking again would change nothing: the page lists only the keys it applies to.
        return reason_action(
            self,
            request,
            queryset.exclude(status=SigningKeyStatus.REVOKED),
            title="Revoke signing keys (what they signed no longer verifies)",
            apply=lambda key, reason: signing_key_revoke(
                kid=key.kid, reason=reason, actor=Actor.of_user(request.user)
            ),
            done="{count} key(s) revoked.",
        )
