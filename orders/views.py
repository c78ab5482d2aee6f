"""The payment provider's webhook endpoint."""

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from marketplace.api.problems import error_response, problem_response
from marketplace.exceptions import ApplicationError
from orders.services import webhook_receive

# Stripe sends a few kilobytes; anything far larger is not an event.
WEBHOOK_MAX_BYTES = 1024 * 1024


@csrf_exempt
@require_POST
def stripe_webhook(request: HttpRequest) -> HttpResponse:
    """Verifies, stores and acknowledges; a worker does the rest."""
    try:
        if len(request.body) > WEBHOOK_MAX_BYTES:
            return problem_response(
                request,
                status=413,
                code="payload-too-large",
                detail="The body is larger than 1 MiB.",
            )
        event, created = webhook_receive(
            payload=request.body, signature=request.headers.get("Stripe-Signature")
        )
    except ApplicationError as exc:
        return error_response(request, exc)
    return JsonResponse({"received": True, "id": event.event_id, "duplicate": not created})
