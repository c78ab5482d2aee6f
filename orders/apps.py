from typing import Any

from django.apps import AppConfig
from django.core import checks


class OrdersConfig(AppConfig):
    name = "orders"
    verbose_name = "Orders"

    def ready(self) -> None:
        from orders.approvals import register_approval_kinds

        checks.register(handover_receiver_check)
        # Refunds above MARKETPLACE_APPROVAL_REFUND_MINOR wait for a second person.
        register_approval_kinds()


def handover_receiver_check(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """orders.E001 when nothing receives released, refunded and disputed orders
    (orders.handover): `check`, `migrate` and the development server refuse to go on."""
    from django.core.exceptions import ImproperlyConfigured

    from orders import handover

    try:
        handover.receiver_required()
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), id="orders.E001")]
    return []
