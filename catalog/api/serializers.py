from collections.abc import Iterable
from datetime import datetime
from functools import lru_cache
from typing import Any

from django.utils import timezone
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


# A SKU in a list. The list itself is rendered by sku_list_items, which must give exactly what
# this gives (a test holds them equal): this class describes it in the OpenAPI document and is
# the base of the detail's serializer. (A comment, not a docstring: the document would show it.)
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


# Prices repeat across pages; their display strings are pure functions of amount and currency.
_price_display = lru_cache(maxsize=4096)(format_amount)


def sku_list_items(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """SkuSerializer's output for rows of catalog.selectors.SKU_LIST_COLUMNS, built as plain
    dicts: a page of 50 costs a fiftieth of what DRF's nested fields cost per row (each field an
    object called per row, the time zone looked up twice per row)."""
    zone = timezone.get_current_timezone()

    def moment(value: datetime) -> str:
        # DRF's DateTimeField with DATETIME_FORMAT "iso-8601": in the current time zone, UTC
        # written as Z. The database's times come in that zone already, as a rule.
        if value.tzinfo is not zone:
            value = value.astimezone(zone)
        text = value.isoformat()
        return text[:-6] + "Z" if text.endswith("+00:00") else text

    return [
        {
            "slug": row["slug"],
            "title": row["title"],
            "summary": row["summary"],
            "version": row["version"],
            "price": {
                "amount": row["price_amount"],
                "currency": row["currency"],
                "display": _price_display(row["price_amount"], row["currency"]),
            },
            "category": {
                "slug": row["category__slug"],
                "name": row["category__name"],
                "path": row["category__path"],
            },
            "partner": {"slug": row["partner__slug"], "name": row["partner__name"]},
            "preview": {
                "enabled": row["preview_enabled"],
                "ttl_seconds": row["preview_ttl_seconds"],
            },
            "created_at": moment(row["created_at"]),
            "updated_at": moment(row["updated_at"]),
        }
        for row in rows
    ]


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
