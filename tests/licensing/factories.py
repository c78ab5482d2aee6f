"""Licensing for tests: orders paid through the real payment pipeline (a signed webhook event,
its processing, the Finance posting), then licensed and packaged by the licensing services in
this process, as the workers would."""

from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import Group
from django.test import Client

from catalog.models import Sku
from licensing.models import Delivery, License
from licensing.services import delivery_package, order_fulfil, order_revoke
from licensing.services.fulfilment import LICENSING_WORKER
from marketplace.models import User
from marketplace.roles import roles_sync
from orders.models import FinancePosting, Order, PostingStatus, WebhookEvent, WebhookStatus
from orders.services import finance_posting_send, webhook_event_process, webhook_secrets
from tests.orders.factories import order_checked_out, sku_for_sale
from tests.orders.stripe_events import (
    charge_refunded_event,
    dispute_created_event,
    session_event,
    signed,
)

STAFF_PASSWORD = "correct horse battery staple"
ARTIFACT = b"marketplace artifact\n" * 5000  # ~100 KiB: several chunks at a small chunk size


def _deliver_event(event: dict[str, Any]) -> None:
    body, header = signed(event, webhook_secrets()[0])
    response = Client().post(
        "/marketplace/stripe/webhook",
        data=body,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=header,
    )
    assert response.status_code == 200, response.content


def _process_all() -> None:
    for pk in (
        WebhookEvent.objects.filter(status__in=[WebhookStatus.RECEIVED, WebhookStatus.FAILED])
        .order_by("received_at", "pk")
        .values_list("pk", flat=True)
    ):
        webhook_event_process(event_pk=pk)
    for pk in FinancePosting.objects.filter(status=PostingStatus.PENDING).values_list(
        "pk", flat=True
    ):
        finance_posting_send(posting_pk=pk)


def sku_licensed(**fields: Any) -> Sku:
    fields.setdefault("content", ARTIFACT)
    return sku_for_sale(**fields)


def order_paid(buyer: User, sku: Sku | None = None, **sku_fields: Any) -> Order:
    """An order paid (checkout.session.completed), booked with Finance and so released."""
    order = order_checked_out(buyer, sku or sku_licensed(**sku_fields))
    _deliver_event(session_event("checkout.session.completed", order))
    _process_all()
    order.refresh_from_db()
    assert order.delivery_state == "released", order.delivery_state
    return order


def order_refunded(order: Order) -> Order:
    """The provider's charge.refunded for the whole amount, processed. Licensing's revocation
    (which orders hands to a worker) is not run: call order_revoke for that."""
    _deliver_event(
        charge_refunded_event(
            order,
            amount_refunded=order.amount,
            refund_ids=[(f"re_{order.pk.hex[:12]}", order.amount)],
        )
    )
    _process_all()
    order.refresh_from_db()
    return order


def order_disputed(order: Order) -> Order:
    _deliver_event(dispute_created_event(order))
    _process_all()
    order.refresh_from_db()
    return order


def order_revoked(order: Order, reason: str = "refunded") -> dict[str, int]:
    return order_revoke(order_id=order.pk, reason=reason)


@dataclass
class Delivered:
    order: Order
    license: License
    delivery: Delivery


def order_licensed(buyer: User, sku: Sku | None = None, **sku_fields: Any) -> Order:
    order = order_paid(buyer, sku, **sku_fields)
    order_fulfil(order_id=order.pk)
    return order


def order_delivered(buyer: User, sku: Sku | None = None, **sku_fields: Any) -> Delivered:
    """Paid, licensed and packaged, with its proof."""
    order = order_licensed(buyer, sku, **sku_fields)
    delivery = Delivery.objects.get(order=order)
    assert delivery_package(delivery_id=delivery.pk, actor=LICENSING_WORKER) == "ready"
    delivery.refresh_from_db()
    return Delivered(order=order, license=License.objects.get(order=order), delivery=delivery)


def staff_member(email: str, *roles: str, superuser: bool = False) -> User:
    roles_sync()
    user = User.objects.create_user(
        email=email, password=STAFF_PASSWORD, is_staff=True, is_superuser=superuser
    )
    user.groups.add(*Group.objects.filter(name__in=roles))
    return user
