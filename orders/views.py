"""The payment provider's webhook endpoint."""

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from marketplace.api.parsers import json_body_read
from marketplace.api.problems import error_response, problem_response
from marketplace.exceptions import ApplicationError
from orders.services import webhook_receive


@csrf_exempt
def stripe_webhook(request: HttpRequest) -> HttpResponse:
    """Verifies, stores and acknowledges; a worker does the rest."""
    if request.method != "POST":
        return problem_response(
            request,
            status=405,
            code="method-not-allowed",
            detail=f"Method {request.method} not allowed: Stripe POSTs its events.",
            headers={"Allow": "POST"},
        )
    try:
        # Stripe sends a few kilobytes: a body over MARKETPLACE_JSON_MAX_BYTES is a 413 before
        # the signature is checked (nothing is stored), and no more than that is read.
        payload = json_body_read(request)
        event, created = webhook_receive(
            payload=payload, signature=request.headers.get("Stripe-Signature")
        )
    except ApplicationError as exc:
        return error_response(request, exc)
    return JsonResponse({"received": True, "id": event.event_id, "duplicate": not created})
