"""Reads for orders."""

import functools
from dataclasses import dataclass
from typing import Any

from django.db.models import Q

from catalog.models import Sku
from orders.exceptions import OrderNotFound
from orders.models import Order, OrderQuerySet


def order_list_for_buyer(*, buyer: Any) -> OrderQuerySet:
    return Order.objects.for_buyer(buyer)


def order_get_for_buyer(*, buyer: Any, order_id: Any) -> Order:
    """The buyer's order; another buyer's order is as unknown as one that does not exist."""
    order = Order.objects.for_buyer(buyer).filter(pk=order_id).first()
    if order is None:
        raise OrderNotFound(f"You have no order {order_id}.")
    return order


def order_timeline(order: Order) -> Any:
    """The order's audit events, and those of its webhook events (replays, dead letters),
    oldest first."""
    from audit.models import AuditEvent

    event_ids = [str(pk) for pk in order.webhook_events.values_list("pk", flat=True)]
    return AuditEvent.objects.filter(
        Q(subject_type="order", subject_id=str(order.pk))
        | Q(subject_type="webhookevent", subject_id__in=event_ids)
    ).order_by("id")


@dataclass(frozen=True)
class SkuOnOffer:
    """What checkout reads of a SKU: the order's snapshot and the payment page, nothing else
    (no manifest, no description)."""

    id: int
    slug: str
    title: str
    version: str
    status: str
    price_amount: int
    currency: str
    artifact_id: int | None
    license_duration_days: int | None
    license_seats: int
    license_entitlements: list[str]
    seller_slug: str
    # [{"partner": slug, "basis_points": n}, ...] sorted by partner, as the order keeps them.
    splits: list[dict[str, Any]]


_OFFER_COLUMNS = (
    "id",
    "slug",
    "title",
    "version",
    "status",
    "price_amount",
    "currency",
    "artifact_id",
    "license_duration_days",
    "license_seats",
    "license_entitlements",
    "partner__slug",
)


@functools.cache
def _offer_rows() -> Any:
    # Set up once per process and cloned by each read's filter(): resolving the values() of
    # the joined columns costs more than the filter, on every checkout.
    return Sku.objects.order_by().values_list(
        *_OFFER_COLUMNS, "splits__partner__slug", "splits__basis_points"
    )


def sku_on_offer(*, slug: str) -> SkuOnOffer | None:
    """The SKU `slug` as checkout sells it, whatever its status; None if there is none.

    One query: the SKU's columns with its partner's slug, joined to its royalty splits and
    their partners (a row per split, one row with no split for a SKU without any).
    """
    rows = list(_offer_rows().filter(slug=slug))
    if not rows:
        return None
    first = dict(zip(_OFFER_COLUMNS, rows[0][: len(_OFFER_COLUMNS)], strict=True))
    splits = sorted(
        (
            {"partner": partner, "basis_points": basis_points}
            for *_, partner, basis_points in rows
            if partner is not None
        ),
        key=lambda split: split["partner"],
    )
    return SkuOnOffer(
        id=first["id"],
        slug=first["slug"],
        title=first["title"],
        version=first["version"],
        status=first["status"],
        price_amount=int(first["price_amount"]),
        currency=first["currency"],
        artifact_id=first["artifact_id"],
        license_duration_days=first["license_duration_days"],
        license_seats=first["license_seats"],
        license_entitlements=list(first["license_entitlements"] or []),
        seller_slug=first["partner__slug"],
        splits=splits,
    )
