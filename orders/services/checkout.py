"""Checkout: one order and one Checkout Session per buyer and Idempotency-Key.

The key is claimed first, with an insert that the (buyer, key) constraint lets only one request
win; the insert commits on its own before anything else happens, so a concurrent request with
the same key sees the claim. The winner calls the payment provider outside any transaction
(with the order id, chosen at the claim, as the provider's own idempotency key) and then writes
the order, its audit event and the stored answer in one short transaction. Concurrent requests
with the same key get 409 while the winner works and the stored answer afterwards; a request
that finds a claim whose holder died (its lock ran out) takes it over and, thanks to the
provider's idempotency, ends with the same Checkout Session.

Round trips of a new order: the claim's insert; the SKU with its splits (one query); the
provider; then BEGIN, the order's insert, the answer stored on the claim, the audit event and
COMMIT. The order id is the claim's, so of a takeover racing its original the second to insert
the order is refused by the primary key and answers what the first stored.
"""

import hashlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.services import audit_append
from catalog.exceptions import SkuNotFound
from catalog.models import SkuStatus
from marketplace.actors import Actor
from marketplace.canonical import canonical_json
from marketplace.maintenance import MaintenanceMode, maintenance_on
from orders.exceptions import (
    CheckoutInProgress,
    IdempotencyKeyReused,
    PaymentProviderRejected,
    PaymentProviderUnavailable,
    SkuNotForSale,
)
from orders.gateways import CheckoutRequest, GatewayRejected, GatewayUnavailable, get_gateway
from orders.models import IdempotencyKey, Order
from orders.selectors import SkuOnOffer, sku_on_offer
from orders.services.transactions import committed_alone

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckoutAnswer:
    status: int
    body: dict[str, Any]
    replayed: bool


def request_fingerprint(body: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(body)).hexdigest()


def _lock_deadline() -> Any:
    return timezone.now() + timedelta(seconds=settings.CHECKOUT_LOCK_SECONDS)


def _claim(*, buyer: Any, key: str, fingerprint: str) -> IdempotencyKey | CheckoutAnswer:
    """The buyer's claim on `key`, committed, or the answer already given to it."""
    for _ in range(3):
        try:
            with committed_alone():
                return IdempotencyKey.objects.create(
                    buyer=buyer,
                    key=key,
                    fingerprint=fingerprint,
                    order_id=uuid.uuid4(),
                    locked_until=_lock_deadline(),
                )
        except IntegrityError:
            pass
        existing = IdempotencyKey.objects.filter(buyer=buyer, key=key).first()
        if existing is None:
            continue  # expired and purged in between: claim again
        now = timezone.now()
        if existing.is_expired_at(now):
            IdempotencyKey.objects.filter(pk=existing.pk, created_at=existing.created_at).delete()
            continue
        if existing.fingerprint != fingerprint:
            raise IdempotencyKeyReused(
                "This Idempotency-Key was already used with another request body; "
                "use a new key for a new purchase.",
            )
        if existing.is_complete:
            return CheckoutAnswer(existing.response_status, existing.response_body, True)
        if existing.locked_until > now:
            raise CheckoutInProgress(
                "A checkout with this Idempotency-Key is still being created; "
                "retry in a moment to get its answer.",
                extra={"retry_after": 1},
            )
        # The request that claimed the key died or gave up: take over its order id.
        taken = IdempotencyKey.objects.filter(
            pk=existing.pk, locked_until=existing.locked_until, response_status__isnull=True
        ).update(locked_until=_lock_deadline())
        if taken:
            existing.refresh_from_db()
            return existing
    raise CheckoutInProgress(
        "The Idempotency-Key is being claimed by another request; retry in a moment.",
        extra={"retry_after": 1},
    )


def _sku_for_sale(slug: str) -> SkuOnOffer:
    sku = sku_on_offer(slug=slug)
    if sku is None:
        raise SkuNotFound(f"There is no SKU {slug!r}.", extra={"sku": slug})
    if sku.status != SkuStatus.ACTIVE:
        raise SkuNotForSale(
            f"{slug} is not for sale (it is {sku.status}).",
            extra={"sku": slug, "sku_status": sku.status},
        )
    return sku


def checkout_create(
    *,
    buyer: Any,
    sku_slug: str,
    idempotency_key: str,
    render: Callable[[Order], dict[str, Any]],
) -> CheckoutAnswer:
    """Creates the buyer's order for `sku_slug` and its Checkout Session, once per key.

    `render` turns the new order into the answer's `order` object (a new order has no proof
    yet, so it need not look one up); the answer is stored with the key so that a retry gets
    the same bytes back. Nothing is written when the SKU is not for sale. If the provider
    cannot be reached the claim is kept (with its order id) but unlocked, so a retry with the
    same key picks it up.

    Precondition: called outside any transaction (the claim must be visible to concurrent
    requests before the provider is called).
    """
    if maintenance_on():
        raise MaintenanceMode("Checkout is paused for maintenance; try again shortly.")
    fingerprint = request_fingerprint({"sku": sku_slug})
    claim = _claim(buyer=buyer, key=idempotency_key, fingerprint=fingerprint)
    if isinstance(claim, CheckoutAnswer):
        return claim

    try:
        sku = _sku_for_sale(sku_slug)
    except (SkuNotFound, SkuNotForSale):
        claim.delete()
        raise

    gateway = get_gateway()
    order_id = str(claim.order_id)
    try:
        session = gateway.checkout_session_create(
            CheckoutRequest(
                order_id=order_id,
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
    except (GatewayUnavailable, GatewayRejected) as exc:
        IdempotencyKey.objects.filter(pk=claim.pk).update(locked_until=timezone.now())
        # The provider's own words name hosts, ports, accounts or keys: they go to the log,
        # and the buyer gets ours.
        logger.warning("checkout of order %s: %s", order_id, " ".join(str(exc).split()))
        if isinstance(exc, GatewayUnavailable):
            raise PaymentProviderUnavailable(
                "The payment provider cannot be reached right now; retry with the same "
                "Idempotency-Key.",
                retry_after=5,
            ) from exc
        raise PaymentProviderRejected(
            "The payment provider refused to create the payment page. The refusal has been "
            "logged for the operators; try again later with the same Idempotency-Key, or "
            "contact support."
        ) from exc

    order = Order(
        id=claim.order_id,
        buyer=buyer,
        sku_id=sku.id,
        sku_slug=sku.slug,
        sku_title=sku.title,
        sku_version=sku.version,
        seller_slug=sku.seller_slug,
        amount=sku.price_amount,
        currency=sku.currency,
        splits=sku.splits,
        artifact_id=sku.artifact_id,
        license_duration_days=sku.license_duration_days,
        license_seats=sku.license_seats,
        license_entitlements=sku.license_entitlements,
        gateway=gateway.name,
        checkout_session_id=session.id,
        checkout_url=session.url,
    )
    try:
        with transaction.atomic(durable=True):
            # A plain INSERT, no lookup first (the id has a default, so Django does not try an
            # UPDATE): the id is the claim's, so if a takeover finished first it is an
            # IntegrityError, answered below.
            order.save(force_insert=True)
            body = {"order": render(order), "checkout_url": session.url}
            IdempotencyKey.objects.filter(pk=claim.pk).update(
                response_status=201, response_body=body
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
                    "splits": sku.splits,
                    "gateway": gateway.name,
                    "checkout_session": session.id,
                },
            )
    except IntegrityError:
        stored = IdempotencyKey.objects.filter(pk=claim.pk).first()
        if stored is None or not stored.is_complete:
            raise
        return CheckoutAnswer(stored.response_status, stored.response_body, True)
    return CheckoutAnswer(201, body, False)


def idempotency_keys_purge(*, now: Any = None) -> int:
    """Deletes keys older than the replay window (24 hours)."""
    cutoff = (now or timezone.now()) - settings.CHECKOUT_IDEMPOTENCY_TTL
    deleted, _ = IdempotencyKey.objects.filter(created_at__lt=cutoff).delete()
    return deleted
