"""The SKU list is rendered by catalog.api.serializers.sku_list_items from `.values()` rows, not
by SkuSerializer; both must give the same JSON, byte for byte, since the OpenAPI document and
the API's clients know the serializer's."""

from datetime import UTC, datetime

import pytest
from django.utils import timezone
from rest_framework.renderers import JSONRenderer

from catalog.api.serializers import SkuSerializer, sku_list_items
from catalog.models import Sku
from catalog.selectors import sku_list_public
from tests.catalog.factories import CategoryFactory, make_publisher, publish_sku

pytestmark = pytest.mark.django_db


@pytest.fixture
def varied(publisher):
    nested = CategoryFactory(slug="child", name="Enfant « ü »", parent=CategoryFactory(slug="top"))
    other = make_publisher(slug="zeta", name="Zêta \u2028 Games")
    publish_sku(publisher, slug="usd", title="Plain", price_amount=1999, currency="USD")
    publish_sku(
        publisher,
        slug="jpy",
        title="円 ✓",
        price_amount=500,
        currency="JPY",
        category=nested,
        preview_ttl_seconds=3600,
    )
    # Switched on by previews.services.sku_preview_set, with material; the row is what counts.
    Sku.objects.filter(slug="jpy").update(preview_enabled=True)
    publish_sku(
        other,
        slug="kwd",
        title='Quote " and \\ back',
        price_amount=1234567,
        currency="KWD",
        summary="Tab\there, newline\nthere",
        version="2.0.0-rc.1",
    )
    # A time with no microseconds is written without a fraction, by both.
    Sku.objects.filter(slug="usd").update(
        created_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        updated_at=datetime(2026, 1, 2, 3, 4, 5, 600, tzinfo=UTC),
    )  # fmt: skip


@pytest.mark.parametrize("zone", [None, "Europe/Paris", "Asia/Kolkata"])
def test_the_list_renders_what_the_serializer_does(varied, zone):
    ordering = ("-created_at", "-id")
    rows = list(sku_list_public().order_by(*ordering))
    instances = list(Sku.objects.active().select_related("category", "partner").order_by(*ordering))
    assert [row["slug"] for row in rows] == [sku.slug for sku in instances]

    with timezone.override(zone) if zone else timezone.override(timezone.get_current_timezone()):
        plain = sku_list_items(rows)
        drf = SkuSerializer(instances, many=True).data

    assert plain == drf
    assert JSONRenderer().render(plain) == JSONRenderer().render(drf)
