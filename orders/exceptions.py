"""Orders' domain errors, each with a code and an HTTP status (marketplace.exceptions)."""

from marketplace.exceptions import (
    ApplicationError,
    Conflict,
    InvalidInput,
    NotFound,
    ServiceUnavailable,
)


class IdempotencyKeyReused(ApplicationError):
    code = "idempotency-key-reused"
    title = "This Idempotency-Key was used for another request"
    status = 422


class CheckoutInProgress(Conflict):
    code = "checkout-in-progress"
    title = "A checkout with this Idempotency-Key is still in progress"


class SkuNotForSale(Conflict):
    code = "sku-not-for-sale"
    title = "The SKU is not for sale"


class PaymentProviderUnavailable(ServiceUnavailable):
    code = "payment-provider-unavailable"
    title = "The payment provider could not be reached"


class PaymentProviderRejected(ApplicationError):
    code = "payment-provider-rejected"
    title = "The payment provider refused the request"
    status = 502


class OrderNotFound(NotFound):
    code = "order-not-found"
    title = "Order not found"


class RefundNotAllowed(InvalidInput):
    code = "refund-not-allowed"
    title = "The refund is not allowed"


class OrderStateConflict(Conflict):
    code = "order-state-conflict"
    title = "The order is not in a state that allows this"


class WebhookSignatureInvalid(ApplicationError):
    code = "webhook-signature-invalid"
    title = "The webhook signature could not be verified"
    status = 400

    def __init__(self, detail: str, *, reason: str) -> None:
        super().__init__(detail)
        self.reason = reason


class WebhookBodyInvalid(InvalidInput):
    code = "webhook-body-invalid"
    title = "The webhook body is not a Stripe event"
