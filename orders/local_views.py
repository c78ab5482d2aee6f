"""The local test gateway's checkout page (orders.gateways.local) and the default success and
cancel pages."""

import json

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET

from marketplace.api.parsers import JsonBodyRefused, json_body_read, json_parse
from marketplace.api.problems import problem_response
from marketplace.money import format_amount
from orders.gateways import local
from orders.models import Order
from orders.services import signature_header, webhook_secrets


def _local_order(session_id: str) -> Order:
    """The order of a local checkout session. With Stripe configured there are none: the page
    and its event endpoint would otherwise sign events for Stripe's orders."""
    if settings.STRIPE_SECRET_KEY or not session_id.startswith(local.SESSION_PREFIX):
        raise Http404("No such checkout session.")
    order = Order.objects.select_related("buyer").filter(checkout_session_id=session_id).first()
    if order is None:
        raise Http404("No such checkout session.")
    return order


@require_GET
def local_checkout(request: HttpRequest, session_id: str) -> HttpResponse:
    order = _local_order(session_id)
    return render(
        request,
        "orders/local_checkout.html",
        {
            "order": order,
            "amount": format_amount(order.amount, order.currency),
            "event_url": reverse("local-checkout-event", args=[session_id]),
            "webhook_url": reverse("stripe-webhook"),
        },
    )


LOCAL_OUTCOMES: dict[str, tuple[str, str, str, str]] = {
    # button: (event type, session status, payment status, where the buyer goes next)
    "pay": ("checkout.session.completed", "complete", "paid", "success"),
    "decline": ("checkout.session.async_payment_failed", "complete", "unpaid", "cancel"),
    "expire": ("checkout.session.expired", "expired", "unpaid", "cancel"),
}


def local_checkout_event(request: HttpRequest, session_id: str) -> HttpResponse:
    """The signed event a button stands for. The page posts it to the webhook itself, with
    its Stripe-Signature header, so it travels the same road as Stripe's deliveries."""
    if request.method != "POST":  # a JSON endpoint: its 405 is a problem too
        return problem_response(
            request,
            status=405,
            code="method-not-allowed",
            detail=f"Method {request.method} not allowed: POST the button's outcome.",
            headers={"Allow": "POST"},
        )
    order = _local_order(session_id)
    try:
        body = json_parse(json_body_read(request) or b"{}")
    except JsonBodyRefused:  # too large, too deep or not JSON: no outcome either way
        body = None
    outcome = body.get("outcome") if isinstance(body, dict) else None
    if not isinstance(outcome, str) or outcome not in LOCAL_OUTCOMES:  # [] is not hashable
        return problem_response(
            request,
            status=400,
            code="invalid-input",
            detail="outcome must be pay, decline or expire.",
        )
    event_type, status, payment_status, goes_to = LOCAL_OUTCOMES[outcome]
    event = local.event_envelope(
        event_type, local.session_object(order, status=status, payment_status=payment_status)
    )
    payload = json.dumps(event)
    return JsonResponse(
        {
            "payload": payload,
            "signature": signature_header(payload.encode(), secret=webhook_secrets()[0]),
            "redirect": settings.CHECKOUT_SUCCESS_URL
            if goes_to == "success"
            else settings.CHECKOUT_CANCEL_URL,
        }
    )


@require_GET
def checkout_result(request: HttpRequest, outcome: str) -> HttpResponse:
    """Where the default success and cancel URLs lead (a real shop sets its own)."""
    return render(request, "orders/checkout_result.html", {"paid": outcome == "success"})
