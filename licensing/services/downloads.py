"""Handing a buyer their package: a time-limited link, the means to decrypt, a log entry.

On S3 the link is presigned, so the platform cannot see the download itself: handing out a link
counts as a download. For local files the link is a signed platform URL, and each use of it is
counted. Either way the delivery's download limit (MARKETPLACE_DOWNLOAD_LIMIT) and the link's
lifetime (MARKETPLACE_DOWNLOAD_LINK_SECONDS) apply, and every one is logged with time, address
and user agent. The data key is never logged.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, BinaryIO

from django.conf import settings
from django.core import signing
from django.db import transaction
from django.db.models import F
from django.urls import reverse
from django.utils import timezone

from audit.services import audit_append
from licensing.exceptions import DeliveryNotReady, DownloadGone, PackageUnavailable
from licensing.keys import data_key_unwrap
from licensing.models import (
    BuyerDeliveryKey,
    Delivery,
    DeliveryStatus,
    DownloadKind,
    DownloadLog,
)
from licensing.sealing import b64url_encode, delivery_info, load_public_key, seal_text
from licensing.services.deliveries import delivery_context
from licensing.storage import package_open, package_url
from marketplace.actors import Actor
from marketplace.exceptions import InvalidInput, NotFound
from orders.models import REVOKING, Order

_LINK_SALT = "licensing.download-link"


@dataclass(frozen=True)
class DeliveryAccess:
    delivery: Delivery
    download_url: str
    expires_at: datetime
    decryption_key: str | None
    wrapped_key: str | None
    downloads_left: int


def _gone_for_order(order: Order) -> None:
    """A refunded or disputed order's package is gone for good: 410 with the order's status as
    the reason, even before the withdrawal the refund sets off has run."""
    if order.status in REVOKING:
        raise DownloadGone(
            f"Order {order.id} is {order.status}: its package can no longer be downloaded.",
            extra={"reason": str(order.status)},
        )


def _current_delivery(order: Order) -> Delivery:
    _gone_for_order(order)
    delivery = (
        Delivery.objects.filter(order=order)
        .exclude(status=DeliveryStatus.SUPERSEDED)
        .order_by("-created_at")
        .first()
    )
    if delivery is not None and delivery.status == DeliveryStatus.WITHDRAWN:
        raise DownloadGone(
            f"The package of order {order.id} was withdrawn; it can no longer be downloaded.",
            extra={"reason": "withdrawn"},
        )
    if not order.is_deliverable():
        # Not paid yet, waiting for Finance, or held by staff: it may still come.
        raise DeliveryNotReady(
            f"Order {order.id} cannot be delivered now ({order.delivery_state}).",
            extra={"delivery": order.delivery_state},
        )
    if delivery is None or delivery.status != DeliveryStatus.READY:
        raise DeliveryNotReady(
            f"Order {order.id} has no package ready yet; try again shortly.",
            extra={"delivery": "pending" if delivery is None else str(delivery.status)},
        )
    return delivery


def _limit_reached() -> DownloadGone:
    return DownloadGone(
        f"The download limit ({settings.DOWNLOAD_LIMIT}) of this package is reached; "
        "ask support to regenerate it.",
        extra={"reason": "limit"},
    )


def _log(delivery: Delivery, *, kind: str, ip: str | None, user_agent: str) -> None:
    DownloadLog.objects.create(
        delivery=delivery, kind=kind, ip=ip or None, user_agent=(user_agent or "")[:500]
    )


def _count_one(delivery: Delivery) -> None:
    """Counts a download, refusing it past the limit; one UPDATE, so concurrent downloads
    cannot both take the last one."""
    counted = Delivery.objects.filter(pk=delivery.pk, downloads__lt=settings.DOWNLOAD_LIMIT).update(
        downloads=F("downloads") + 1
    )
    if not counted:
        raise _limit_reached()


def _decryption_material(delivery: Delivery, buyer: Any) -> tuple[str | None, str | None]:
    """(decryption_key, wrapped_key): the data key in base64url, or, for a buyer who has
    registered an X25519 key, only sealed to it. Neither is ever logged."""
    data_key = data_key_unwrap(
        delivery_id=str(delivery.id),
        wrapped=bytes(delivery.wrapped_key),
        wrapping=delivery.key_wrapping,
    )
    buyer_key = BuyerDeliveryKey.objects.filter(buyer=buyer).first()
    if buyer_key is None:
        return b64url_encode(data_key), None
    sealed = seal_text(
        load_public_key(buyer_key.public_key),
        data_key,
        info=delivery_info(delivery_context(delivery)),
    )
    return None, sealed


def delivery_access(
    *, order_id: Any, buyer: Any, ip: str | None, user_agent: str
) -> DeliveryAccess:
    """The buyer's package: a link valid MARKETPLACE_DOWNLOAD_LINK_SECONDS and the means to
    decrypt. 404 for an order that is not the buyer's; 409 while nothing is ready (or the
    order is held); 410 once refunded, disputed, withdrawn or at the download limit.

    A presigned S3 link is counted and logged here (the platform never sees its use); a
    platform link is counted when it is used (download_link_open)."""
    order = Order.objects.filter(pk=order_id, buyer=buyer).first()
    if order is None:
        raise NotFound(f"You have no order {order_id}.")
    delivery = _current_delivery(order)
    # Unwrapped (KMS may be down) before anything is counted, so a failure costs no download.
    decryption_key, wrapped_key = _decryption_material(delivery, buyer)
    expires_at = timezone.now().replace(microsecond=0) + timedelta(
        seconds=settings.DOWNLOAD_LINK_SECONDS
    )
    url = package_url(delivery.storage_name, expires_in=settings.DOWNLOAD_LINK_SECONDS)
    if url is not None:
        with transaction.atomic():
            _count_one(delivery)
            _log(delivery, kind=DownloadKind.LINK, ip=ip, user_agent=user_agent)
    else:
        if delivery.downloads >= settings.DOWNLOAD_LIMIT:
            raise _limit_reached()
        token = signing.dumps(
            {"d": str(delivery.id), "e": int(expires_at.timestamp())}, salt=_LINK_SALT
        )
        url = settings.PUBLIC_URL + reverse("delivery-package", args=[token])
    delivery.refresh_from_db(fields=["downloads"])
    return DeliveryAccess(
        delivery=delivery,
        download_url=url,
        expires_at=expires_at,
        decryption_key=decryption_key,
        wrapped_key=wrapped_key,
        downloads_left=max(settings.DOWNLOAD_LIMIT - delivery.downloads, 0),
    )


def download_link_open(*, token: str, ip: str | None, user_agent: str) -> tuple[Delivery, BinaryIO]:
    """The delivery a platform download link stands for and its package, opened, counted and
    logged; 410 once the link has expired or the limit is reached. The caller closes it."""
    try:
        claims = signing.loads(token, salt=_LINK_SALT)
        delivery_id, expires = claims["d"], int(claims["e"])
    except (signing.BadSignature, KeyError, TypeError, ValueError):
        raise NotFound("No such download link.") from None
    if timezone.now().timestamp() >= expires:
        raise DownloadGone(
            "This download link has expired; ask the API for a new one.",
            extra={"reason": "expired"},
        )
    delivery = Delivery.objects.select_related("order").filter(pk=delivery_id).first()
    if delivery is None:
        raise NotFound("No such download link.")
    _gone_for_order(delivery.order)
    if delivery.status in (DeliveryStatus.SUPERSEDED, DeliveryStatus.WITHDRAWN):
        raise DownloadGone(
            f"This package was {delivery.status}; ask the API for the current one.",
            extra={"reason": str(delivery.status)},
        )
    if delivery.status != DeliveryStatus.READY or not delivery.order.is_deliverable():
        raise DeliveryNotReady(
            "This package cannot be downloaded now "
            f"({delivery.order.delivery_state}); try again later.",
            extra={"delivery": delivery.order.delivery_state},
        )
    # Opened before the download is counted: a package that cannot be read costs no download.
    try:
        handle = package_open(delivery.storage_name)
    except OSError as exc:
        raise PackageUnavailable(
            "The package cannot be read right now; try again shortly."
        ) from exc
    try:
        with transaction.atomic():
            _count_one(delivery)
            _log(delivery, kind=DownloadKind.DOWNLOAD, ip=ip, user_agent=user_agent)
    except BaseException:
        handle.close()
        raise
    return delivery, handle


def buyer_delivery_key_set(*, buyer: Any, public_key: Any) -> BuyerDeliveryKey:
    """Registers (or replaces) the buyer's X25519 public key, audited: from now on their data
    keys are served only sealed to it."""
    if not isinstance(public_key, str) or not public_key.strip():
        raise InvalidInput(
            "Send your X25519 public key.", errors={"public_key": ["Required, a string."]}
        )
    try:
        raw = load_public_key(public_key.strip())
    except ValueError as exc:
        raise InvalidInput(str(exc), errors={"public_key": [str(exc)]}) from None
    encoded = b64url_encode(raw)
    with transaction.atomic():
        key, created = BuyerDeliveryKey.objects.update_or_create(
            buyer=buyer, defaults={"public_key": encoded}
        )
        audit_append(
            actor=Actor.of_user(buyer),
            action="delivery_key.registered" if created else "delivery_key.replaced",
            subject=("buyer", buyer.uuid),
            data={"public_key": encoded},
        )
    return key


def buyer_delivery_key_delete(*, buyer: Any) -> bool:
    """Forgets the buyer's delivery key (audited); data keys are then served in the clear."""
    with transaction.atomic():
        deleted, _ = BuyerDeliveryKey.objects.filter(buyer=buyer).delete()
        if deleted:
            audit_append(
                actor=Actor.of_user(buyer),
                action="delivery_key.deleted",
                subject=("buyer", buyer.uuid),
            )
    return bool(deleted)
