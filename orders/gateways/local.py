"""The local test gateway, the embedded default (refused in production).

Its Checkout Sessions are pages the platform serves itself (orders.views.local_checkout). Their
Pay, Decline and Expire buttons, and a refund from the admin, produce the event Stripe would send,
with Stripe's object shapes, signed with the webhook secret and posted to the same webhook
endpoint: everything after the payment runs exactly as it does with Stripe.
"""

import json
import secrets
import time
import uuid
from typing import Any

from django.conf import settings

from orders.gateways import CheckoutRequest, CheckoutSession, GatewayRejected, RefundResult

API_VERSION = "2026-07-29.dahlia"
SESSION_PREFIX = "cs_local_"
INTENT_PREFIX = "pi_local_"


def session_id_of(order_id: str) -> str:
    return SESSION_PREFIX + uuid.UUID(order_id).hex


def intent_id_of(order_id: str) -> str:
    return INTENT_PREFIX + uuid.UUID(order_id).hex


def order_id_of(local_id: str) -> str | None:
    for prefix in (SESSION_PREFIX, INTENT_PREFIX):
        if local_id.startswith(prefix):
            try:
                return str(uuid.UUID(local_id.removeprefix(prefix)))
            except ValueError:
                return None
    return None


def event_envelope(event_type: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "evt_local_" + secrets.token_hex(12),
        "object": "event",
        "api_version": API_VERSION,
        "created": int(time.time()),
        "data": {"object": obj},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
    }


def session_object(order: Any, *, status: str, payment_status: str) -> dict[str, Any]:
    order_id = str(order.id)
    return {
        "id": order.checkout_session_id,
        "object": "checkout.session",
        "amount_subtotal": order.amount,
        "amount_total": order.amount,
        "cancel_url": settings.CHECKOUT_CANCEL_URL,
        "client_reference_id": order_id,
        "created": int(order.created_at.timestamp()),
        "currency": order.currency.lower(),
        "customer_email": order.buyer.email,
        "livemode": False,
        "metadata": {"order_id": order_id, "sku": order.sku_slug},
        "mode": "payment",
        "payment_intent": intent_id_of(order_id),
        "payment_method_types": ["card"],
        "payment_status": payment_status,
        "status": status,
        "success_url": settings.CHECKOUT_SUCCESS_URL,
        "url": None,
    }


def charge_object(
    order: Any, *, amount_refunded: int, refunds: list[dict[str, Any]]
) -> dict[str, Any]:
    order_id = str(order.id)
    return {
        "id": "ch_local_" + uuid.UUID(order_id).hex,
        "object": "charge",
        "amount": order.amount,
        "amount_captured": order.amount,
        "amount_refunded": amount_refunded,
        "captured": True,
        "created": int(time.time()),
        "currency": order.currency.lower(),
        "disputed": False,
        "livemode": False,
        "metadata": {},
        "paid": True,
        "payment_intent": intent_id_of(order_id),
        "refunded": amount_refunded >= order.amount,
        "refunds": {"object": "list", "data": refunds, "has_more": False},
        "status": "succeeded",
    }


def event_send(event: dict[str, Any]) -> None:
    """Signs `event` and hands it to the webhook pipeline, as Stripe's delivery would."""
    from orders.services.webhooks import signature_header, webhook_receive, webhook_secrets

    payload = json.dumps(event).encode()
    webhook_receive(
        payload=payload, signature=signature_header(payload, secret=webhook_secrets()[0])
    )


class LocalGateway:
    name = "local"

    def checkout_session_create(
        self, request: CheckoutRequest, *, idempotency_key: str
    ) -> CheckoutSession:
        session_id = session_id_of(request.order_id)
        return CheckoutSession(
            id=session_id, url=f"{settings.PUBLIC_URL}/marketplace/local-checkout/{session_id}"
        )

    def payment_intent_order_id(self, payment_intent_id: str) -> str | None:
        return order_id_of(payment_intent_id)

    def refund_create(
        self, *, payment_intent_id: str, amount: int, reason: str, idempotency_key: str
    ) -> RefundResult:
        from orders.models import Order, Refund

        order = Order.objects.filter(payment_intent_id=payment_intent_id).first()
        if order is None:
            raise GatewayRejected(f"No such payment_intent: {payment_intent_id}")
        refund_id = "re_local_" + uuid.uuid5(uuid.NAMESPACE_URL, idempotency_key).hex
        known = [
            {"id": r.gateway_refund_id, "object": "refund", "amount": r.amount, "status": r.status}
            for r in Refund.objects.filter(order=order).exclude(gateway_refund_id=refund_id)
        ]
        refunds = [
            {"id": refund_id, "object": "refund", "amount": amount, "status": "succeeded"},
            *known,
        ]
        total = sum(r["amount"] for r in refunds)
        if total > order.amount:
            # What Stripe answers too: a refund beyond what is left is refused, not capped.
            raise GatewayRejected(
                f"Refund amount exceeds the unrefunded amount of {payment_intent_id}"
            )
        event_send(
            event_envelope(
                "charge.refunded", charge_object(order, amount_refunded=total, refunds=refunds)
            )
        )
        return RefundResult(id=refund_id, amount=amount, status="succeeded")
