from rest_framework import serializers

from previews.models import PreviewSession
from previews.selectors import GONE_DETAIL


class PreviewSerializer(serializers.ModelSerializer):
    """A buyer's preview session. The token and the URL are in the answer to the POST only:
    the platform keeps no more than the token's hash."""

    sku = serializers.CharField(source="sku.slug", help_text="The SKU's slug.")
    material_version = serializers.IntegerField(source="material.version")
    reason = serializers.SerializerMethodField(
        help_text="Why it ended (`expired`, `ended`, `revoked`, `failed`, `rotated`), once ended."
    )
    detail = serializers.SerializerMethodField(
        help_text="What ended it, in words (the same words for every session ended for one "
        "reason: what the sandbox said, or an operator's reason, stays with the operators)."
    )

    class Meta:
        model = PreviewSession
        fields = [
            "id",
            "sku",
            "kind",
            "status",
            "material_version",
            "created_at",
            "ready_at",
            "expires_at",
            "ended_at",
            "reason",
            "detail",
        ]

    def get_reason(self, session: PreviewSession) -> str | None:
        return session.end_reason or None

    def get_detail(self, session: PreviewSession) -> str:
        return GONE_DETAIL.get(session.end_reason, "") if session.end_reason else ""


class PreviewCreatedSerializer(PreviewSerializer):
    token = serializers.CharField(
        help_text="256 bits, URL-safe base64: whoever holds it can open the preview. Shown once."
    )
    url = serializers.URLField(help_text="Where the preview opens: `/previews/{token}/`.")

    class Meta(PreviewSerializer.Meta):
        fields = [*PreviewSerializer.Meta.fields, "token", "url"]
