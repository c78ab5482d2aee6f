"""Where orders hands an order over to licensing and delivery.

Orders sits below licensing (DESIGN.md: apps depend downward), so it cannot import it. It
declares here what it needs from the app above, `OrderReceiver`; licensing implements it
(`licensing.handover.LicensingReceiver`) and the platform wires the two when it starts
(`config.apps.PlatformConfig.ready`). Nothing is looked up by name: with no receiver
registered, start-up fails (`receiver_required`) and so does every hand-over, loudly, rather
than a released order or a refund going nowhere.

Hand-overs are sent after the change that calls for them has committed (the callers use
`transaction.on_commit(..., robust=True)`: a broker outage then is logged, not answered as an
error for a change that is already made). A hand-over lost that way or in a crash is picked up
by licensing's sweeps: the fulfilment sweep looks for released orders without a license or
delivery, the revocation sweep for refunded or disputed orders with an active license or a
current delivery.
"""

import uuid
from collections.abc import Iterable
from typing import Protocol

from django.core.exceptions import ImproperlyConfigured


class OrderReceiver(Protocol):
    def order_released(self, order_id: str) -> None:
        """The order became deliverable (paid, Finance acknowledged, no hold): issue its
        license and its delivery. Called after the commit; sends work to a worker."""
        ...

    def order_revoked(self, order_id: str, reason: str) -> None:
        """The order was refunded or disputed (`reason`): its licenses must stop verifying and
        its packages be withdrawn. Called after the commit; sends work to a worker."""
        ...

    def latest_proofs(self, order_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, uuid.UUID]:
        """The id of each order's delivery proof, for the orders that have one: what the order
        JSON shows as `proof`. One query whatever the number of orders."""
        ...


_receiver: OrderReceiver | None = None


def receiver_register(receiver: OrderReceiver) -> None:
    global _receiver
    _receiver = receiver


def receiver_required() -> OrderReceiver:
    """The registered receiver; ImproperlyConfigured when there is none."""
    if _receiver is None:
        raise ImproperlyConfigured(
            "orders has no receiver for released, refunded and disputed orders: the licensing "
            "app registers one at start-up (config.apps.PlatformConfig); is 'config' in "
            "INSTALLED_APPS?"
        )
    return _receiver


def order_released(order_id: str) -> None:
    receiver_required().order_released(order_id)


def order_revoked(order_id: str, reason: str) -> None:
    receiver_required().order_revoked(order_id, reason)


def latest_proofs(order_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, uuid.UUID]:
    return receiver_required().latest_proofs(order_ids)
