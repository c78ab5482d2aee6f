from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from catalog.models import Category, Partner, Sku
from catalog.selectors import CategoryNode
from marketplace.money import format_amount


class PriceSerializer(serializers.Serializer):
    amount = serializers.IntegerField(source="price_amount", help_text="In minor units.")
    currency = serializers.CharField()
    display = serializers.SerializerMethodField()

    def get_display(self, sku: Sku) -> str:
        return format_amount(sku.price_amount, sku.currency)


class CategoryRefSerializer(serializers.ModelSerializer):
    class Meta:
        model = Category
        fields = ["slug", "name", "path"]


class PartnerRefSerializer(serializers.ModelSerializer):
    class Meta:
        model = Partner
        fields = ["slug", "name"]


class SkuSerializer(serializers.ModelSerializer):
    price = PriceSerializer(source="*")
    category = CategoryRefSerializer()
    partner = PartnerRefSerializer()
    preview = serializers.SerializerMethodField()

    class Meta:
        model = Sku
        fields = [
            "slug",
            "title",
            "summary",
            "version",
            "price",
            "category",
            "partner",
            "preview",
            "created_at",
            "updated_at",
        ]

    @extend_schema_field(
        {
            "type": "object",
            "properties": {"enabled": {"type": "boolean"}, "ttl_seconds": {"type": "integer"}},
        }
    )
    def get_preview(self, sku: Sku) -> dict[str, Any]:
        return {"enabled": sku.preview_enabled, "ttl_seconds": sku.preview_ttl_seconds}


class LicenseTermsSerializer(serializers.Serializer):
    duration_days = serializers.IntegerField(
        source="license_duration_days", allow_null=True, help_text="null: perpetual."
    )
    seats = serializers.IntegerField(source="license_seats")
    entitlements = serializers.ListField(
        source="license_entitlements", child=serializers.CharField()
    )
    terms_url = serializers.SerializerMethodField(help_text="null: no terms page is given.")

    @extend_schema_field({"type": "string", "format": "uri", "nullable": True})
    def get_terms_url(self, sku: Sku) -> str | None:
        # An empty string is not a URL: no terms page is said as null.
        return sku.license_terms_url or None


class ArtifactSerializer(serializers.Serializer):
    filename = serializers.CharField()
    size = serializers.IntegerField()
    sha256 = serializers.CharField()


class SkuDetailSerializer(SkuSerializer):
    license = LicenseTermsSerializer(source="*")
    artifact = ArtifactSerializer()

    class Meta(SkuSerializer.Meta):
        fields = [*SkuSerializer.Meta.fields, "description", "license", "artifact"]


class PartnerSerializer(serializers.ModelSerializer):
    active_sku_count = serializers.IntegerField()

    class Meta:
        model = Partner
        fields = ["slug", "name", "kind", "website", "description", "active_sku_count"]


class CategorySerializer(serializers.Serializer):
    slug = serializers.CharField(source="category.slug")
    name = serializers.CharField(source="category.name")
    path = serializers.CharField(source="category.path")
    parent = serializers.SerializerMethodField()
    description = serializers.CharField(source="category.description")
    sku_count = serializers.IntegerField(help_text="Active SKUs here and in subcategories.")

    def get_parent(self, node: CategoryNode) -> str | None:
        parent = node.category.parent
        return parent.slug if parent else None


class CategoryListSerializer(serializers.Serializer):
    """The answer of GET /api/v1/categories: an object, so that it can grow members."""

    results = CategorySerializer(many=True)
