"""Endpoints outside the buyer API: the payment provider's webhook, and the local test
gateway's checkout page."""

import json

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from marketplace.api.problems import PROBLEM_CONTENT_TYPE, problem_body
from marketplace.exceptions import ApplicationError
from orders.gateways import local
from orders.models import Order
from orders.services import signature_header, webhook_receive, webhook_secrets

# Stripe sends a few kilobytes; anything far larger is not an event.
WEBHOOK_MAX_BYTES = 1024 * 1024


@csrf_exempt
@require_POST
def stripe_webhook(request: HttpRequest) -> HttpResponse:
    """Verifies, stores and acknowledges; a worker does the rest."""
    try:
        if len(request.body) > WEBHOOK_MAX_BYTES:
            return _problem(request, 413, "payload-too-large", "The body is larger than 1 MiB.")
        event, created = webhook_receive(
            payload=request.body, signature=request.headers.get("Stripe-Signature")
        )
    except ApplicationError as exc:
        return _problem(request, exc.status, exc.code, exc.detail)
    return JsonResponse({"received": True, "id": event.event_id, "duplicate": not created})


def _problem(request: HttpRequest, status: int, code: str, detail: str) -> JsonResponse:
    return JsonResponse(
        problem_body(status=status, code=code, detail=detail, instance=request.path),
        status=status,
        content_type=PROBLEM_CONTENT_TYPE,
    )


def _local_order(session_id: str) -> Order:
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


@require_POST
def local_checkout_event(request: HttpRequest, session_id: str) -> HttpResponse:
    """The signed event a button stands for. The page posts it to the webhook itself, with
    its Stripe-Signature header, so it travels the same road as Stripe's deliveries."""
    order = _local_order(session_id)
    try:
        outcome = json.loads(request.body or b"{}").get("outcome")
    except (ValueError, AttributeError):
        outcome = None
    if outcome not in LOCAL_OUTCOMES:
        return _problem(request, 400, "invalid-input", "outcome must be pay, decline or expire.")
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
