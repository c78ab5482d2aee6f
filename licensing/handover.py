"""Licensing's side of the hand-over from orders (orders.handover.OrderReceiver): a released
order is fulfilled, a refunded or disputed one revoked, each by a task on a worker."""

import uuid
from collections.abc import Iterable

from licensing import selectors, tasks


class LicensingReceiver:
    def order_released(self, order_id: str) -> None:
        tasks.order_fulfil.delay(order_id)

    def order_revoked(self, order_id: str, reason: str) -> None:
        tasks.order_revoke.delay(order_id, reason=reason)

    def latest_proofs(self, order_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, uuid.UUID]:
        return selectors.proof_ids_latest(order_ids=order_ids)
