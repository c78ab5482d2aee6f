"""The buyer's side of orders: checkout, and reading their own orders."""

import time
from typing import Any

import django_filters
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from marketplace.api.pagination import SignedCursorPagination
from marketplace.api.schema import problem
from marketplace.exceptions import ApplicationError
from orders.api.serializers import (
    CheckoutInputSerializer,
    CheckoutResponseSerializer,
    OrderSerializer,
    order_created_representation,
)
from orders.metrics import checkout_latency
from orders.models import Order, OrderStatus
from orders.selectors import order_get_for_buyer, order_list_for_buyer
from orders.services import checkout_create

IDEMPOTENCY_HEADER = "Idempotency-Key"


def idempotency_key_of(request: Request) -> str:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None or key == "":
        raise ValidationError(
            {
                IDEMPOTENCY_HEADER: [
                    "Required: send a unique key per purchase and reuse it on retry."
                ]
            }
        )
    if len(key) > 255 or not all(" " <= ch <= "~" for ch in key):
        raise ValidationError({IDEMPOTENCY_HEADER: ["1 to 255 printable ASCII characters."]})
    return key


class CheckoutView(APIView):
    throttle_scope = "checkout"

    @extend_schema(
        summary="Buy a SKU: create an order and its payment page",
        request=CheckoutInputSerializer,
        parameters=[
            OpenApiParameter(
                IDEMPOTENCY_HEADER,
                location=OpenApiParameter.HEADER,
                required=True,
                # HTTP trims a header's ends, so a key can neither start nor end with a space.
                type={
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 255,
                    "pattern": r"^[!-~]([ -~]{0,253}[!-~])?$",
                },
                description="1 to 255 printable characters, unique per purchase. The same key and "
                "body within 24 hours answers the first answer again.",
            ),
            OpenApiParameter(
                "Retry-After",
                location=OpenApiParameter.HEADER,
                response=[409],
                type={"type": "integer", "minimum": 0},
                description="With `checkout-in-progress`: seconds before asking again.",
            ),
        ],
        responses={
            201: CheckoutResponseSerializer,
            400: problem('Missing Idempotency-Key, or a body that is not {"sku": slug}'),
            404: problem("No such SKU"),
            409: problem("The SKU is not for sale, or the same key is still being processed"),
            422: problem("The key was used with another body"),
            502: problem("The payment provider refused to create the payment page"),
            503: problem("Maintenance, or the payment provider is unreachable"),
        },
    )
    def post(self, request: Request) -> Response:
        started = time.perf_counter()
        outcome = "error"
        try:
            key = idempotency_key_of(request)
            data = CheckoutInputSerializer(data=request.data)
            data.is_valid(raise_exception=True)
            answer = checkout_create(
                buyer=request.user,
                sku_slug=data.validated_data["sku"],
                idempotency_key=key,
                render=order_created_representation,
            )
            outcome = "replayed" if answer.replayed else "created"
        except ApplicationError as exc:
            outcome = exc.code
            raise
        finally:
            checkout_latency.labels(outcome=outcome).observe(time.perf_counter() - started)
        headers = {"Idempotent-Replayed": "true"} if answer.replayed else {}
        return Response(answer.body, status=answer.status, headers=headers)


class OrderFilter(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(choices=OrderStatus.choices)


class OrderListView(generics.ListAPIView):
    serializer_class = OrderSerializer
    pagination_class = SignedCursorPagination
    filterset_class = OrderFilter
    cursor_ordering = ("-created_at", "-id")

    def get_queryset(self) -> Any:
        if getattr(self, "swagger_fake_view", False):  # the OpenAPI generator has no buyer
            return Order.objects.none()
        return order_list_for_buyer(buyer=self.request.user)

    @extend_schema(
        summary="Your orders, newest first",
        responses={200: OrderSerializer(many=True), 400: problem("A filter did not parse")},
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)


class OrderDetailView(APIView):
    @extend_schema(
        summary="One of your orders",
        responses={200: OrderSerializer, 404: problem("You have no such order")},
    )
    def get(self, request: Request, order_id: Any) -> Response:
        return Response(
            OrderSerializer(order_get_for_buyer(buyer=request.user, order_id=order_id)).data
        )
