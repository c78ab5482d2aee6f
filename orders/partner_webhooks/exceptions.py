"""Partner webhooks' domain errors (marketplace.exceptions)."""

from marketplace.exceptions import Conflict, InvalidInput


class WebhookEndpointInvalid(InvalidInput):
    code = "webhook-endpoint-invalid"
    title = "The webhook endpoint is not acceptable"


class WebhookReplayRefused(Conflict):
    code = "webhook-replay-refused"
    title = "The webhook message cannot be replayed now"
