"""The floor of the checkout benchmark: the least a request can do to leave the same rows that
POST /api/v1/checkout leaves.

Those rows are an order (with the SKU snapshot), its `order.created` audit event (through
audit_append, as every writer appends one) and the buyer's idempotency key holding the stored
answer. The floor reads what it needs to write them (the buyer by token digest; the SKU's
snapshot columns with its partner and splits in one query, as checkout reads them,
orders.selectors.sku_on_offer) and writes them in one transaction. It leaves out everything
else ours does: DRF (parsing, authentication class, throttles in Redis, serializers), the claim
committed before the payment provider is called and completed after it (two commits instead of
one), the token's last-use touch, and the call to Stripe (the local stand-in). So ours ÷ floor
is what those cost together; bench/checkout/run.py also reports the Stripe stand-in's own CPU
per request.

A second floor, `checkout_floor_paid`, also calls the payment provider (the Stripe stand-in)
through the platform's gateway, as checkout must to get a real payment page, and stores what it
answered: ours ÷ that floor is the cost of everything but the provider's call.

Both go through the project's middleware, like the API.
"""

import json
import uuid

from django.conf import settings
from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from audit.services import audit_append
from marketplace.actors import Actor
from marketplace.models import ApiToken, User
from orders.gateways import CheckoutRequest, get_gateway
from orders.models import IdempotencyKey, Order
from orders.selectors import sku_on_offer
from orders.services.checkout import request_fingerprint


@csrf_exempt
@require_POST
def checkout_floor(request: HttpRequest) -> JsonResponse:
    return _floor(request, paid=False)


@csrf_exempt
@require_POST
def checkout_floor_paid(request: HttpRequest) -> JsonResponse:
    return _floor(request, paid=True)


def _floor(request: HttpRequest, *, paid: bool) -> JsonResponse:
    token = request.headers.get("Authorization", "").removeprefix("Bearer ")
    key = request.headers["Idempotency-Key"]
    slug = json.loads(request.body)["sku"]
    buyer = User.objects.get(api_tokens__digest=ApiToken.digest_of(token))
    sku = sku_on_offer(slug=slug)
    splits = sku.splits
    order_id = uuid.uuid4()
    if paid:
        gateway = "floor-paid"
        session = get_gateway().checkout_session_create(
            CheckoutRequest(
                order_id=str(order_id),
                amount=sku.price_amount,
                currency=sku.currency,
                title=f"{sku.title} {sku.version}",
                sku_slug=sku.slug,
                buyer_email=buyer.email,
                success_url=settings.CHECKOUT_SUCCESS_URL,
                cancel_url=settings.CHECKOUT_CANCEL_URL,
            ),
            idempotency_key=f"checkout-{order_id}",
        )
        session_id, checkout_url = session.id, session.url
    else:
        gateway = "floor"
        session_id = f"cs_floor_{order_id.hex}"
        checkout_url = f"https://checkout.stripe.com/c/pay/{session_id}"
    with transaction.atomic():
        order = Order.objects.create(
            id=order_id,
            buyer=buyer,
            sku_id=sku.id,
            sku_slug=sku.slug,
            sku_title=sku.title,
            sku_version=sku.version,
            seller_slug=sku.seller_slug,
            amount=sku.price_amount,
            currency=sku.currency,
            splits=splits,
            artifact_id=sku.artifact_id,
            license_duration_days=sku.license_duration_days,
            license_seats=sku.license_seats,
            license_entitlements=sku.license_entitlements,
            gateway=gateway,
            checkout_session_id=session_id,
            checkout_url=checkout_url,
        )
        audit_append(
            actor=Actor.of_user(buyer),
            action="order.created",
            subject=order,
            data={
                "sku": sku.slug,
                "version": sku.version,
                "amount": order.amount,
                "currency": order.currency,
                "splits": splits,
                "gateway": gateway,
                "checkout_session": session_id,
            },
        )
        body = {
            "order": {
                "id": str(order.id),
                "status": order.status,
                "sku": order.sku_slug,
                "amount": order.amount,
                "currency": order.currency,
                "created_at": order.created_at.isoformat(),
            },
            "checkout_url": order.checkout_url,
        }
        IdempotencyKey.objects.create(
            buyer=buyer,
            key=key,
            fingerprint=request_fingerprint({"sku": slug}),
            order_id=order_id,
            response_status=201,
            response_body=body,
            locked_until=timezone.now(),
        )
    return JsonResponse(body, status=201)
