from typing import Any

from rest_framework import serializers

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

    def get_proof(self, order: Order) -> str | None:
        # Licensing files its proofs against the order (a reverse relation by name, so orders
        # does not import licensing); the list prefetches them.
        proofs = getattr(order, "proofs", None)
        if proofs is None:
            return None
        latest = max(proofs.all(), key=lambda proof: proof.created_at, default=None)
        return str(latest.pk) if latest else None


class CheckoutResponseSerializer(serializers.Serializer):
    order = OrderSerializer()
    checkout_url = serializers.URLField()
