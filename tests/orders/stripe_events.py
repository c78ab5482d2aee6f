"""Stripe events for tests, built from Stripe's own example objects (tests/fixtures/stripe,
copied from stripe/openapi) and signed with the `stripe` library's scheme."""

import copy
import json
import time
import uuid
from pathlib import Path
from typing import Any

import stripe

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "stripe"


def stripe_object(name: str) -> dict[str, Any]:
    """A fresh copy of one of Stripe's example objects: checkout.session, charge, dispute,
    refund, payment_intent or event."""
    return copy.deepcopy(json.loads((FIXTURES / f"{name}.json").read_text()))


def envelope(event_type: str, obj: dict[str, Any], *, event_id: str | None = None) -> dict:
    event = stripe_object("event")
    event.update(
        id=event_id or f"evt_{uuid.uuid4().hex[:24]}",
        type=event_type,
        created=int(time.time()),
        data={"object": obj},
    )
    return event


def session_event(
    event_type: str,
    order: Any,
    *,
    payment_status: str = "paid",
    status: str = "complete",
    event_id: str | None = None,
    amount: int | None = None,
) -> dict[str, Any]:
    """checkout.session.* for `order`, as Stripe sends it."""
    session = stripe_object("checkout.session")
    session.update(
        id=order.checkout_session_id,
        client_reference_id=str(order.id),
        metadata={"order_id": str(order.id), "sku": order.sku_slug},
        amount_total=order.amount if amount is None else amount,
        amount_subtotal=order.amount if amount is None else amount,
        currency=order.currency.lower(),
        payment_intent=payment_intent_of(order),
        payment_status=payment_status,
        status=status,
    )
    return envelope(event_type, session, event_id=event_id)


def payment_intent_of(order: Any) -> str:
    return order.payment_intent_id or f"pi_{uuid.UUID(str(order.id)).hex[:24]}"


def charge_refunded_event(
    order: Any, *, amount_refunded: int, refund_ids: list[tuple[str, int]] = (), event_id=None
) -> dict[str, Any]:
    charge = stripe_object("charge")
    refunds = []
    for refund_id, amount in refund_ids:
        refund = stripe_object("refund")
        refund.update(id=refund_id, amount=amount, charge=charge["id"], status="succeeded")
        refunds.append(refund)
    charge.update(
        amount=order.amount,
        amount_captured=order.amount,
        amount_refunded=amount_refunded,
        currency=order.currency.lower(),
        payment_intent=payment_intent_of(order),
        refunded=amount_refunded >= order.amount,
        refunds={"object": "list", "data": refunds, "has_more": False, "url": "/v1/refunds"},
    )
    return envelope("charge.refunded", charge, event_id=event_id)


def dispute_created_event(order: Any, *, event_id: str | None = None) -> dict[str, Any]:
    dispute = stripe_object("dispute")
    dispute.update(
        amount=order.amount,
        currency=order.currency.lower(),
        payment_intent=payment_intent_of(order),
        status="needs_response",
    )
    return envelope("charge.dispute.created", dispute, event_id=event_id)


def signed(
    event: dict[str, Any] | bytes, secret: str, *, timestamp: int | None = None
) -> tuple[bytes, str]:
    """The body and Stripe-Signature header Stripe would send, computed with the `stripe`
    library's own signing function."""
    payload = event if isinstance(event, bytes) else json.dumps(event).encode()
    timestamp = int(time.time()) if timestamp is None else timestamp
    signature = stripe.WebhookSignature._compute_signature(
        f"{timestamp}.{payload.decode()}", secret
    )
    return payload, f"t={timestamp},v1={signature}"
