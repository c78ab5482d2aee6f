"""Handing a buyer their package: a time-limited link, the means to decrypt, a log entry.

Every link handed out is a download session (DownloadSession), and a session is one download
however many requests and byte ranges it takes, so an interrupted transfer resumes on the same
link at no cost. A platform link (local files) is counted by the first GET that serves package
bytes; HEAD, OPTIONS and an unsatisfiable range cost nothing. A presigned S3 link cannot be
watched, so it is counted when it is handed out. Asking the API again while a session has at
least half its lifetime left answers that same session, not a new one. The delivery's limit
(MARKETPLACE_DOWNLOAD_LIMIT) holds across sessions, the link's lifetime is
MARKETPLACE_DOWNLOAD_LINK_SECONDS, and each counted download is logged with time, client
address and user agent. The data key is never logged.
"""

import logging
import uuid
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
from licensing.exceptions import (
    DeliveryKeyUnusable,
    DeliveryNotReady,
    DownloadGone,
    KeyServiceUnavailable,
    PackageUnavailable,
)
from licensing.keys import DataKeyError, DataKeyUnavailable, data_key_unwrap
from licensing.models import (
    BuyerDeliveryKey,
    Delivery,
    DeliveryStatus,
    DownloadKind,
    DownloadLog,
    DownloadSession,
)
from licensing.sealing import b64url_encode, delivery_info, load_public_key, seal_text
from licensing.services.deliveries import delivery_context
from licensing.storage import package_open, package_url, packages_presigned
from marketplace.actors import Actor
from marketplace.exceptions import InvalidInput, NotFound
from orders.locks import order_lock
from orders.models import REVOKING, Order

logger = logging.getLogger(__name__)

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


def _log(session: DownloadSession, *, ip: str | None, user_agent: str) -> None:
    DownloadLog.objects.create(
        delivery_id=session.delivery_id,
        kind=session.kind,
        ip=ip or None,
        user_agent=(user_agent or "")[:500],
    )


def _count_one(delivery_id: Any) -> None:
    """Counts a download, refusing it past the limit; one UPDATE, so concurrent downloads
    cannot both take the last one."""
    counted = Delivery.objects.filter(pk=delivery_id, downloads__lt=settings.DOWNLOAD_LIMIT).update(
        downloads=F("downloads") + 1
    )
    if not counted:
        raise _limit_reached()


def _link_signer() -> signing.Signer:
    # No timestamp in the token: one session, one URL, however often it is handed out.
    return signing.Signer(salt=_LINK_SALT)


def _at_limit(delivery: Delivery) -> bool:
    return Delivery.objects.filter(pk=delivery.pk, downloads__gte=settings.DOWNLOAD_LIMIT).exists()


def _session_to_reuse(delivery: Delivery, *, kind: str) -> DownloadSession | None:
    """The delivery's newest session of this kind with at least half a link lifetime left:
    asking again answers it instead of starting (on S3: counting) another. Once the limit is
    reached, the newest counted session still open, however little time it has left (it can
    be resumed until it expires), and never a link not used yet (its first use would be
    refused); 410 when there is none."""
    now = timezone.now()
    sessions = DownloadSession.objects.filter(delivery=delivery, kind=kind).order_by("-expires_at")
    keep_until = now + timedelta(seconds=settings.DOWNLOAD_LINK_SECONDS / 2)
    session = sessions.filter(expires_at__gt=keep_until).first()
    if session is not None and session.counted_at is not None:
        return session
    if not _at_limit(delivery):
        return session
    counted = (
        sessions.filter(expires_at__gt=now, counted_at__isnull=False)
        .order_by("-expires_at", "-counted_at")
        .first()
    )
    if counted is None:
        raise _limit_reached()
    return counted


def _session_start(
    delivery: Delivery, *, kind: str, ip: str | None, user_agent: str
) -> DownloadSession:
    """A new session, refused at the limit. A presigned link (kind LINK) is counted and logged
    now; a platform link when it is first used. Caller holds the order's lock."""
    now = timezone.now().replace(microsecond=0)
    session = DownloadSession(
        delivery=delivery,
        kind=kind,
        created_at=now,
        expires_at=now + timedelta(seconds=settings.DOWNLOAD_LINK_SECONDS),
    )
    if kind == DownloadKind.LINK:
        _count_one(delivery.pk)
        session.counted_at = now
        session.save(force_insert=True)
        _log(session, ip=ip, user_agent=user_agent)
        return session
    if _at_limit(delivery):
        raise _limit_reached()
    session.save(force_insert=True)
    return session


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
    """The buyer's package: a link and the means to decrypt. 404 for an order that is not the
    buyer's; 409 while nothing is ready (or the order is held); 410 once refunded, disputed,
    withdrawn or at the download limit (unless a session still open is answered again).

    A session with at least half its lifetime left is answered again at no cost; otherwise a
    new one is started: on S3 counted and logged here (the platform never sees its use), a
    platform link when it is first used (download_session_open)."""
    order = Order.objects.filter(pk=order_id, buyer=buyer).first()
    if order is None:
        raise NotFound(f"You have no order {order_id}.")
    delivery = _current_delivery(order)
    # Unwrapped (KMS may be down) before anything is counted, so a failure costs no download.
    try:
        decryption_key, wrapped_key = _decryption_material(delivery, buyer)
    except DataKeyUnavailable as exc:
        logger.warning("delivery %s: the data key cannot be unwrapped now: %s", delivery.pk, exc)
        raise KeyServiceUnavailable(
            "The means to decrypt your package cannot be fetched right now; try again shortly."
        ) from None
    except DataKeyError as exc:
        logger.error("delivery %s: the data key cannot be unwrapped: %s", delivery.pk, exc)
        raise DeliveryKeyUnusable(
            "The means to decrypt your package cannot be produced; this is the platform's "
            "fault and trying again will not help. Ask support: they can regenerate it."
        ) from None
    kind = DownloadKind.LINK if packages_presigned() else DownloadKind.DOWNLOAD
    with transaction.atomic(durable=True):
        # Two requests at once for one order queue here, so one session is started (and on
        # S3 counted), not two. A refund, withdrawal or regeneration may have committed while
        # this waited: the order and its delivery are read again under the lock.
        order = order_lock(order.pk)
        if _current_delivery(order).pk != delivery.pk:
            # Regenerated and packaged again meanwhile: the key unwrapped above is not its key.
            raise DeliveryNotReady(
                f"The package of order {order.id} was just replaced; ask again.",
                extra={"delivery": "pending"},
            )
        session = _session_to_reuse(delivery, kind=kind) or _session_start(
            delivery, kind=kind, ip=ip, user_agent=user_agent
        )
    # A presigned URL for the session's time left (so it dies with it), or the platform link.
    left = int((session.expires_at - timezone.now()).total_seconds())
    url = package_url(delivery.storage_name, expires_in=max(left, 1))
    if url is None:
        token = _link_signer().sign_object({"s": str(session.pk)})
        url = settings.PUBLIC_URL + reverse("delivery-package", args=[token])
    delivery.refresh_from_db(fields=["downloads"])
    return DeliveryAccess(
        delivery=delivery,
        download_url=url,
        expires_at=session.expires_at,
        decryption_key=decryption_key,
        wrapped_key=wrapped_key,
        downloads_left=max(settings.DOWNLOAD_LIMIT - delivery.downloads, 0),
    )


def _link_session_id(token: str) -> uuid.UUID:
    try:
        return uuid.UUID(_link_signer().unsign_object(token)["s"])
    except (signing.BadSignature, KeyError, TypeError, ValueError):
        pass
    try:
        # A link handed out before links named their session: it cannot be resumed.
        signing.loads(token, salt=_LINK_SALT)
    except (signing.BadSignature, ValueError):
        raise NotFound("No such download link.") from None
    raise _expired()


def _expired() -> DownloadGone:
    return DownloadGone(
        "This download link has expired; ask the API for a new one.",
        extra={"reason": "expired"},
    )


def download_link_check(*, token: str) -> DownloadSession:
    """The session a platform link names (its delivery and order loaded) when the link may be
    used now. Counts and writes nothing: HEAD answers from it, and GET goes on with
    download_session_open. 404 for a forged or unknown link; 410 once it has expired, its
    package was superseded or withdrawn, the order refunded or disputed, or, for a link not
    counted yet, at the limit; 409 while the order is held."""
    session = (
        DownloadSession.objects.select_related("delivery__order")
        .filter(pk=_link_session_id(token), kind=DownloadKind.DOWNLOAD)
        .first()
    )
    if session is None:
        raise NotFound("No such download link.")
    if not session.is_open_at(timezone.now()):
        raise _expired()
    delivery = session.delivery
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
    if session.counted_at is None and delivery.downloads >= settings.DOWNLOAD_LIMIT:
        raise _limit_reached()
    return session


def _package_open(session: DownloadSession) -> BinaryIO:
    try:
        return package_open(session.delivery.storage_name)
    except OSError as exc:
        raise PackageUnavailable(
            "The package cannot be read right now; try again shortly."
        ) from exc


def download_session_probe(*, session: DownloadSession) -> None:
    """What HEAD needs to answer as GET would: the package is opened (a local file: one
    `open`) and closed at once, counting and writing nothing; 503 when it cannot be read."""
    _package_open(session).close()


def download_session_open(*, session: DownloadSession, ip: str | None, user_agent: str) -> BinaryIO:
    """The package of a link download_link_check let through, opened to serve bytes of it.
    The first such use counts the link as one download and logs it; later ones (resumed or
    parallel ranges) cost nothing. 410 when that first use finds the limit reached; 503 when
    the package cannot be read (nothing counted). The caller closes it and reports what it
    served (download_session_served)."""
    # Opened before the download is counted: a package that cannot be read costs no download.
    handle = _package_open(session)
    if session.counted_at is not None:
        return handle
    try:
        with transaction.atomic(durable=True):
            # One conditional UPDATE claims the session: of concurrent first requests one
            # counts it; the others wait for its commit and find it counted (or, if the limit
            # refused it, try in turn).
            now = timezone.now()
            claimed = DownloadSession.objects.filter(pk=session.pk, counted_at__isnull=True).update(
                counted_at=now
            )
            if claimed:
                _count_one(session.delivery_id)
                _log(session, ip=ip, user_agent=user_agent)
    except BaseException:
        handle.close()
        raise
    session.counted_at = session.counted_at or now
    return handle


def download_session_served(*, session_id: Any, bytes_served: int) -> None:
    """Adds one GET and the bytes it served to the session (after the transfer ended, however
    it ended)."""
    DownloadSession.objects.filter(pk=session_id).update(
        requests=F("requests") + 1, bytes_served=F("bytes_served") + bytes_served
    )


def buyer_delivery_key_set(*, buyer: Any, public_key: Any) -> BuyerDeliveryKey:
    """Registers (or replaces) the buyer's X25519 public key, audited: from now on their data
    keys are served only sealed to it. The key already registered, sent again, changes
    nothing and writes no event."""
    if not isinstance(public_key, str) or not public_key.strip():
        raise InvalidInput(
            "Send your X25519 public key.", errors={"public_key": ["Required, a string."]}
        )
    try:
        raw = load_public_key(public_key.strip())
    except ValueError as exc:
        raise InvalidInput(str(exc), errors={"public_key": [str(exc)]}) from None
    encoded = b64url_encode(raw)
    current = BuyerDeliveryKey.objects.filter(buyer=buyer).first()
    if current is not None and current.public_key == encoded:
        return current
    with transaction.atomic(durable=True):
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
