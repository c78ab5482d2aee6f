import functools
from typing import Any

from django.db import models
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from orders import handover
from orders.models import Order


class CheckoutInputSerializer(serializers.Serializer):
    """`{"sku": "<slug>"}` and nothing else: an unknown field is an error that names it, not
    something silently dropped."""

    sku = serializers.SlugField(max_length=100)

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            errors: dict[str, list[str]] = {}
            for field in sorted(set(data) - set(self.fields)):
                errors[field] = ["Unknown field; the body takes only `sku`."]
            if "sku" in data and not isinstance(data["sku"], str):
                errors["sku"] = ["Must be a string (the SKU's slug)."]
            if errors:
                raise serializers.ValidationError(errors)
        return super().to_internal_value(data)


# Looks up the proofs of the whole page at once (licensing answers them through
# orders.handover), so a page costs the same queries whatever its size.
class OrderListSerializer(serializers.ListSerializer):
    def to_representation(self, data: Any) -> list[Any]:
        orders = list(data.all() if isinstance(data, models.manager.BaseManager) else data)
        self.child.context["proofs"] = handover.latest_proofs([order.pk for order in orders])
        return super().to_representation(orders)


class OrderSerializer(serializers.ModelSerializer):
    sku = serializers.CharField(source="sku_slug", help_text="The SKU's slug.")
    delivery = serializers.CharField(
        source="delivery_state",
        help_text="`released` once the order may be delivered; otherwise why not "
        "(`not_paid`, `finance_pending`, `disputed`, `manual`, `refunded`).",
    )

    proof = serializers.SerializerMethodField(
        help_text="The id of the signed delivery proof (GET /api/v1/proofs/{id}), once delivered."
    )

    class Meta:
        model = Order
        fields = [
            "id",
            "status",
            "sku",
            "sku_title",
            "sku_version",
            "amount",
            "currency",
            "amount_refunded",
            "delivery",
            "checkout_url",
            "created_at",
            "paid_at",
            "updated_at",
            "proof",
        ]
        read_only_fields = fields
        list_serializer_class = OrderListSerializer

    @extend_schema_field({"type": "string", "format": "uuid", "nullable": True})
    def get_proof(self, order: Order) -> str | None:
        proofs = self.context.get("proofs")
        if proofs is None:  # one order: its own lookup
            proofs = handover.latest_proofs([order.pk])
        proof = proofs.get(order.pk)
        return str(proof) if proof else None


@functools.cache
def _created_order_serializer() -> "OrderSerializer":
    # Built once per process, as a ListSerializer builds its child once for a whole page: a
    # ModelSerializer builds its fields from the model on first use, which per order costs
    # more than rendering it. to_representation keeps no state between calls.
    return OrderSerializer(context={"proofs": {}})


def order_created_representation(order: Order) -> dict[str, Any]:
    """A new order as the API shows it (as OrderSerializer(order).data). It has no delivery
    proof yet, so none is looked up."""
    return _created_order_serializer().to_representation(order)


class CheckoutResponseSerializer(serializers.Serializer):
    order = OrderSerializer()
    checkout_url = serializers.URLField()
