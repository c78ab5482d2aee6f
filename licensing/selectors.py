"""Reads for licensing: an order's license and proof, a buyer's proof and delivery key."""

import uuid
from collections.abc import Iterable
from typing import Any

from django.db.models import Case, IntegerField, Value, When

from licensing.exceptions import LicenseNotIssued
from licensing.models import BuyerDeliveryKey, License, LicenseStatus, Proof
from marketplace.exceptions import NotFound
from orders.models import Order


def license_for_order(*, order: Order) -> License:
    """The order's active license, or else the one issued last (a revoked license still
    answers, with its status). LicenseNotIssued when it has none yet."""
    license = (
        License.objects.filter(order=order)
        .annotate(
            active=Case(
                When(status=LicenseStatus.ACTIVE, then=Value(0)),
                default=Value(1),
                output_field=IntegerField(),
            )
        )
        .order_by("active", "-issued_at")
        .first()
    )
    if license is None:
        raise LicenseNotIssued(
            f"Order {order.id} has no license yet ({order.delivery_state}).",
            extra={"delivery": order.delivery_state},
        )
    return license


def proof_ids_latest(*, order_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, uuid.UUID]:
    """The order's proof is the one recorded last for it (a regenerated delivery gets a new
    one): for each order that has one, its id. One query."""
    latest: dict[uuid.UUID, uuid.UUID] = {}
    rows = (
        Proof.objects.filter(order_id__in=list(order_ids))
        .order_by("order_id", "created_at", "id")
        .values_list("order_id", "id")
    )
    for order_id, proof_id in rows:
        latest[order_id] = proof_id  # the last row of each order wins
    return latest


def proof_id_latest(*, order_id: uuid.UUID) -> uuid.UUID | None:
    return proof_ids_latest(order_ids=[order_id]).get(order_id)


def proof_get_for_buyer(*, buyer: Any, proof_id: Any) -> Proof:
    """The buyer's proof; another buyer's is as unknown as one that does not exist."""
    proof = Proof.objects.filter(pk=proof_id, order__buyer=buyer).first()
    if proof is None:
        raise NotFound(f"You have no proof {proof_id}.")
    return proof


def delivery_key_get(*, buyer: Any) -> BuyerDeliveryKey:
    key = BuyerDeliveryKey.objects.filter(buyer=buyer).first()
    if key is None:
        raise NotFound("You have not registered a delivery key.")
    return key
