"""Partner webhooks end to end against a local receiver that verifies every signature with the
`standardwebhooks` reference library: registration and its guard, signing and rotation,
retries (on network errors, 5xx, 408 and 429 only), disabling, replay, the order events, and
the admin narrowed to a partner's own endpoints and messages."""

import socket
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from catalog.models import Partner
from marketplace.actors import Actor
from orders.partner_webhooks import services
from orders.partner_webhooks.exceptions import WebhookEndpointInvalid, WebhookReplayRefused
from orders.partner_webhooks.models import (
    DeliveryStatus,
    PartnerWebhookAttempt,
    PartnerWebhookDelivery,
    PartnerWebhookEndpoint,
    PartnerWebhookMessage,
)
from tests.catalog.factories import PartnerFactory
from tests.catalog.test_partner_staff_admin import partner_staff_user
from tests.orders.factories import order_checked_out, sku_for_sale
from tests.orders.test_support_services import pay
from tests.orders.webhook_receiver import Receiver, webhook_receiver
from tests.support.net import free_port

pytestmark = pytest.mark.django_db

ACTOR = Actor.service("tests")


@pytest.fixture
def receiver() -> Any:
    with webhook_receiver() as running:
        yield running


@pytest.fixture
def partner() -> Partner:
    return PartnerFactory()


def register(partner: Partner, receiver: Receiver, events: list[str] | None = None) -> Any:
    endpoint, secret = services.endpoint_create(
        actor=ACTOR, partner=partner, url=receiver.url, events=events or ["order.paid"]
    )
    receiver.secrets.append(secret)
    return endpoint


def emit(partner: Partner, key: str = "k1", event: str = "order.paid") -> PartnerWebhookDelivery:
    (message,) = services.event_emit(
        event_type=event, partners=[partner], dedupe_key=key, data={"order_id": key}
    )
    return message.deliveries.get()


def send(delivery: PartnerWebhookDelivery) -> str:
    PartnerWebhookDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())
    return services.delivery_send(delivery_pk=delivery.pk)


# --- Registration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://example.com/hook", "https://"),
        ("https://10.0.0.8/hook", "10.0.0.8"),
        ("https://169.254.169.254/latest", "169.254.169.254"),
        ("https://[::1]/hook", "::1"),
        ("https://[fd00::1]/hook", "fd00::1"),
        ("https://0.0.0.0/hook", "0.0.0.0"),  # noqa: S104
        ("https://user:pw@example.com/hook", "user name"),
        ("https:///hook", "no host"),
        ("https://host.invalid/hook", "does not resolve"),
    ],
)
def test_an_endpoint_that_is_not_public_https_is_refused(
    settings: Any, partner: Partner, url: str, problem: str
) -> None:
    settings.PARTNER_WEBHOOK_ALLOW_LOOPBACK = False
    with pytest.raises(WebhookEndpointInvalid) as refused:
        services.endpoint_create(actor=ACTOR, partner=partner, url=url, events=["order.paid"])
    assert problem in refused.value.detail
    assert not PartnerWebhookEndpoint.objects.exists()
    assert not AuditEvent.objects.filter(action__startswith="partner_webhook").exists()


def test_plain_http_to_loopback_needs_the_test_only_setting(
    settings: Any, partner: Partner, receiver: Receiver
) -> None:
    settings.PARTNER_WEBHOOK_ALLOW_LOOPBACK = False
    with pytest.raises(WebhookEndpointInvalid, match="https://"):
        services.endpoint_create(
            actor=ACTOR, partner=partner, url=receiver.url, events=["order.paid"]
        )
    with pytest.raises(WebhookEndpointInvalid, match="loopback"):
        services.endpoint_create(
            actor=ACTOR, partner=partner, url="https://127.0.0.1/x", events=["order.paid"]
        )


def test_unknown_or_no_events_are_refused(partner: Partner, receiver: Receiver) -> None:
    for events in ([], ["order.shipped"]):
        with pytest.raises(WebhookEndpointInvalid) as refused:
            services.endpoint_create(actor=ACTOR, partner=partner, url=receiver.url, events=events)
        assert "events" in (refused.value.errors or {})
    assert not PartnerWebhookEndpoint.objects.exists()


def test_the_secret_is_stored_sealed_and_creation_audited(
    partner: Partner, receiver: Receiver
) -> None:
    endpoint = register(partner, receiver)
    secret = receiver.secrets[0]
    assert secret.startswith("whsec_")
    assert secret.encode() not in bytes(endpoint.secret_sealed)
    assert secret[6:].encode() not in bytes(endpoint.secret_sealed)
    event = AuditEvent.objects.get(action="partner_webhook.endpoint_created")
    assert secret not in str(event.data)


# --- Delivery and signatures -------------------------------------------------------------------


def test_a_message_is_signed_and_verified_by_the_reference_library(
    partner: Partner, receiver: Receiver
) -> None:
    register(partner, receiver)
    delivery = emit(partner)
    assert send(delivery) == DeliveryStatus.SUCCEEDED
    (got,) = receiver.received
    assert got.verified_by == receiver.secrets
    assert got.headers["webhook-id"] == delivery.message.webhook_id
    assert got.payload["type"] == "order.paid"
    assert got.payload["data"] == {"order_id": "k1"}
    attempt = PartnerWebhookAttempt.objects.get()
    assert (attempt.number, attempt.response_status, attempt.succeeded) == (1, 200, True)
    assert attempt.latency_ms >= 0
    # Done: a second run sends nothing.
    assert services.delivery_send(delivery_pk=delivery.pk) == "nothing to send"
    assert len(receiver.received) == 1


def test_the_same_change_emitted_twice_is_one_message(partner: Partner, receiver: Receiver) -> None:
    register(partner, receiver)
    emit(partner, key="same")
    assert (
        services.event_emit(event_type="order.paid", partners=[partner], dedupe_key="same", data={})
        == []
    )
    assert PartnerWebhookMessage.objects.count() == 1


def test_endpoints_get_only_what_they_subscribed_to(partner: Partner, receiver: Receiver) -> None:
    register(partner, receiver, events=["order.refunded"])
    other = PartnerFactory()
    assert (
        services.event_emit(
            event_type="order.paid", partners=[partner, other], dedupe_key="x", data={}
        )
        == []
    )


def test_rotation_signs_with_both_secrets_during_the_overlap(
    partner: Partner, receiver: Receiver, settings: Any
) -> None:
    endpoint = register(partner, receiver)
    old = receiver.secrets[0]
    new = services.endpoint_secret_rotate(actor=ACTOR, endpoint=endpoint)
    receiver.secrets.append(new)
    send(emit(partner, key="during"))
    got = receiver.received[-1]
    assert got.verified_by == [old, new]
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    assert all(part.startswith("v1,") for part in got.headers["webhook-signature"].split(" "))

    PartnerWebhookEndpoint.objects.filter(pk=endpoint.pk).update(
        previous_secret_expires_at=timezone.now() - timedelta(seconds=1)
    )
    send(emit(partner, key="after"))
    assert receiver.received[-1].verified_by == [new]


# --- Retries -----------------------------------------------------------------------------------


def test_a_400_is_final_and_never_retried(partner: Partner, receiver: Receiver) -> None:
    register(partner, receiver)
    receiver.answers = [400]
    delivery = emit(partner)
    assert send(delivery) == DeliveryStatus.FAILED
    assert services.deliveries_due() == []
    assert services.delivery_send(delivery_pk=delivery.pk) == "nothing to send"
    (attempt,) = PartnerWebhookAttempt.objects.all()
    assert (attempt.response_status, attempt.retryable) == (400, False)
    assert len(receiver.received) == 1


@pytest.mark.parametrize("status", [503, 500, 408, 429])
def test_5xx_408_and_429_are_retried_with_backoff_until_delivered(
    partner: Partner, receiver: Receiver, status: int
) -> None:
    register(partner, receiver)
    receiver.answers = [status, status]
    delivery = emit(partner)
    before = timezone.now()
    assert send(delivery) == DeliveryStatus.RETRYING
    delivery.refresh_from_db()
    assert delivery.next_attempt_at >= before + timedelta(seconds=30)
    assert services.deliveries_due() == []  # not before the backoff
    assert send(delivery) == DeliveryStatus.RETRYING
    delivery.refresh_from_db()
    assert delivery.next_attempt_at >= timezone.now() + timedelta(seconds=55)
    assert send(delivery) == DeliveryStatus.SUCCEEDED
    assert [a.response_status for a in PartnerWebhookAttempt.objects.all()] == [
        status,
        status,
        200,
    ]
    ids = {r.headers["webhook-id"] for r in receiver.received}
    assert ids == {delivery.message.webhook_id}


@pytest.mark.parametrize("answer", [301, 302, "redirect", 404, 410])
def test_redirects_and_other_4xx_are_final(
    partner: Partner, receiver: Receiver, answer: Any
) -> None:
    register(partner, receiver)
    receiver.answers = [answer]
    assert send(emit(partner)) == DeliveryStatus.FAILED
    assert len(receiver.received) == 1  # the redirect was not followed


def test_network_errors_and_garbage_are_retried_never_a_crash(partner: Partner) -> None:
    endpoint, _secret = services.endpoint_create(
        actor=ACTOR,
        partner=partner,
        url=f"http://127.0.0.1:{free_port()}/closed",
        events=["order.paid"],
    )
    delivery = emit(partner)
    assert send(delivery) == DeliveryStatus.RETRYING
    attempt = PartnerWebhookAttempt.objects.get()
    assert attempt.response_status is None
    assert "ConnectionRefused" in attempt.error

    with webhook_receiver() as garbage:
        garbage.answers = ["garbage"]
        PartnerWebhookEndpoint.objects.filter(pk=endpoint.pk).update(url=garbage.url)
        assert send(delivery) == DeliveryStatus.RETRYING
    assert PartnerWebhookAttempt.objects.filter(succeeded=False).count() == 2


def test_retries_stop_after_the_window(partner: Partner, receiver: Receiver) -> None:
    register(partner, receiver)
    receiver.answers = [503]
    delivery = emit(partner)
    PartnerWebhookDelivery.objects.filter(pk=delivery.pk).update(
        retry_window_from=timezone.now() - timedelta(hours=72)
    )
    assert send(delivery) == DeliveryStatus.FAILED


def test_a_slow_endpoint_is_cut_at_the_deadline(partner: Partner, settings: Any) -> None:
    settings.PARTNER_WEBHOOK_TIMEOUT_SECONDS = 0.5
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()  # accepts, never answers
    try:
        services.endpoint_create(
            actor=ACTOR,
            partner=partner,
            url=f"http://127.0.0.1:{listener.getsockname()[1]}/slow",
            events=["order.paid"],
        )
        started = timezone.now()
        assert send(emit(partner)) == DeliveryStatus.RETRYING
        assert timezone.now() - started < timedelta(seconds=3)
        assert PartnerWebhookAttempt.objects.get().error == "timeout"
    finally:
        listener.close()


def test_the_address_is_checked_again_at_send_time(
    partner: Partner, receiver: Receiver, settings: Any
) -> None:
    register(partner, receiver)
    delivery = emit(partner)
    # As if the name now resolved to a loopback address (rebinding): refused, nothing sent.
    settings.PARTNER_WEBHOOK_ALLOW_LOOPBACK = False
    assert send(delivery) == DeliveryStatus.FAILED
    assert receiver.received == []
    assert PartnerWebhookAttempt.objects.get().error.startswith("refused:")


def test_an_endpoint_failing_for_days_is_disabled(partner: Partner, receiver: Receiver) -> None:
    endpoint = register(partner, receiver)
    receiver.answers = [503]
    PartnerWebhookEndpoint.objects.filter(pk=endpoint.pk).update(
        failing_since=timezone.now() - timedelta(hours=72)
    )
    send(emit(partner))
    endpoint.refresh_from_db()
    assert endpoint.disabled_at is not None
    assert "no successful delivery since" in endpoint.disabled_reason
    assert AuditEvent.objects.filter(action="partner_webhook.endpoint_disabled").count() == 1
    # Nothing more is sent to it, nor emitted for it.
    assert (
        services.event_emit(
            event_type="order.paid", partners=[partner], dedupe_key="later", data={}
        )
        == []
    )
    services.endpoint_enable(actor=ACTOR, endpoint=endpoint)
    endpoint.refresh_from_db()
    assert endpoint.is_enabled
    assert endpoint.failing_since is None


def test_a_success_clears_failing_since(partner: Partner, receiver: Receiver) -> None:
    endpoint = register(partner, receiver)
    receiver.answers = [503]
    delivery = emit(partner)
    send(delivery)
    endpoint.refresh_from_db()
    assert endpoint.failing_since is not None
    send(delivery)
    endpoint.refresh_from_db()
    assert endpoint.failing_since is None


def test_a_large_answer_is_read_bounded(partner: Partner, receiver: Receiver) -> None:
    register(partner, receiver)
    receiver.answers = [299]
    assert send(emit(partner)) == DeliveryStatus.SUCCEEDED


# --- Replay ------------------------------------------------------------------------------------


def test_replay_sends_the_same_message_again(partner: Partner, receiver: Receiver) -> None:
    register(partner, receiver)
    receiver.answers = [400]
    delivery = emit(partner)
    send(delivery)
    assert services.messages_replay(actor=ACTOR, messages=[delivery.message]) == 1
    assert services.delivery_send(delivery_pk=delivery.pk, replay=True) == DeliveryStatus.SUCCEEDED
    first, second = receiver.received
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert second.verified_by == receiver.secrets
    assert [a.replay for a in PartnerWebhookAttempt.objects.all()] == [False, True]
    assert AuditEvent.objects.filter(action="partner_webhook.message_replayed").count() == 1


def test_replay_to_a_disabled_endpoint_is_refused(partner: Partner, receiver: Receiver) -> None:
    endpoint = register(partner, receiver)
    delivery = emit(partner)
    services.endpoint_disable(actor=ACTOR, endpoint=endpoint, reason="test")
    with pytest.raises(WebhookReplayRefused):
        services.messages_replay(actor=ACTOR, messages=[delivery.message])


# --- Order events ------------------------------------------------------------------------------


def test_a_paid_order_tells_its_partner(buyer: Any, receiver: Receiver) -> None:
    sku = sku_for_sale()
    register(sku.partner, receiver, events=["order.paid", "order.refunded"])
    order = pay(order_checked_out(buyer, sku))
    message = PartnerWebhookMessage.objects.get()
    assert (message.partner, message.event_type) == (sku.partner, "order.paid")
    send(message.deliveries.get())
    (got,) = receiver.received
    data = got.payload["data"]
    assert (data["order_id"], data["status"], data["amount"]) == (str(order.id), "paid", 1999)
    assert "buyer" not in data
    assert got.verified_by == receiver.secrets


# --- Admin: a partner sees only their own ------------------------------------------------------


ENDPOINTS = "/admin/orders/partnerwebhookendpoint/"
MESSAGES = "/admin/orders/partnerwebhookmessage/"
ATTEMPTS = "/admin/orders/partnerwebhookattempt/"


def test_partner_staff_see_only_their_own_endpoints_and_messages(
    client: Any, receiver: Receiver
) -> None:
    acme, beta = PartnerFactory(slug="acme"), PartnerFactory(slug="beta")
    register(acme, receiver)
    beta_endpoint, _ = services.endpoint_create(
        actor=ACTOR,
        partner=beta,
        url=receiver.url.replace("/hooks", "/beta-only"),
        events=["order.paid"],
    )
    send(emit(acme, key="acme-order"))
    beta_delivery = emit(beta, key="beta-order")
    send(beta_delivery)
    client.force_login(partner_staff_user("staff@acme.example", "acme"))

    listing = client.get(ENDPOINTS)
    assert listing.status_code == 200
    assert "/hooks" in listing.content.decode()
    assert "beta-only" not in listing.content.decode()
    assert client.get(f"{ENDPOINTS}{beta_endpoint.pk}/change/").status_code == 302
    messages = client.get(MESSAGES).content.decode()
    assert "acme" in messages
    assert beta_delivery.message.webhook_id not in messages
    assert client.get(f"{MESSAGES}{beta_delivery.message.pk}/change/").status_code == 302
    assert client.get(ATTEMPTS).context["cl"].result_count == 1
    assert client.get(MESSAGES).context["cl"].result_count == 1

    # Replaying Beta's message by posting its id: the scoped queryset holds nothing of it.
    client.post(MESSAGES, {"action": "replay", "_selected_action": [str(beta_delivery.message.pk)]})
    beta_delivery.refresh_from_db()
    assert beta_delivery.status == DeliveryStatus.SUCCEEDED
    assert not AuditEvent.objects.filter(action="partner_webhook.message_replayed").exists()


def test_partner_staff_register_for_their_own_partner_only(client: Any, receiver: Receiver) -> None:
    acme, beta = PartnerFactory(slug="acme"), PartnerFactory(slug="beta")
    client.force_login(partner_staff_user("staff@acme.example", "acme"))
    refused = client.post(
        f"{ENDPOINTS}add/", {"partner": beta.pk, "url": receiver.url, "events": ["order.paid"]}
    )
    assert refused.status_code == 200  # the form again, with the error
    assert not PartnerWebhookEndpoint.objects.exists()

    made = client.post(
        f"{ENDPOINTS}add/",
        {"partner": acme.pk, "url": receiver.url, "events": ["order.paid"]},
        follow=True,
    )
    assert made.status_code == 200
    endpoint = PartnerWebhookEndpoint.objects.get()
    assert endpoint.partner == acme
    assert "shown this once: whsec_" in made.content.decode()
    # Shown once: the endpoint's page does not show it.
    page = client.get(f"{ENDPOINTS}{endpoint.pk}/change/").content.decode()
    assert "whsec_" not in page

    private = client.post(
        f"{ENDPOINTS}{endpoint.pk}/change/",
        {"url": "https://10.1.2.3/x", "events": ["order.paid"]},
    )
    assert "10.1.2.3" in private.content.decode()
    endpoint.refresh_from_db()
    assert endpoint.url == receiver.url
