"""Writes for licensing: licenses, deliveries, downloads and the hand-over from orders."""

from licensing.services.deliveries import (
    PACKAGE_FORMAT,
    PackagingFailed,
    deliveries_withdraw_for_order,
    delivery_context,
    delivery_create,
    delivery_failure_record,
    delivery_package,
    delivery_regenerate,
    proof_fingerprint,
    proof_payload,
)
from licensing.services.downloads import (
    DeliveryAccess,
    DeliveryNotReady,
    DownloadGone,
    buyer_delivery_key_set,
    delivery_access,
    download_link_open,
)
from licensing.services.fulfilment import (
    LICENSING_WORKER,
    fulfilment_due,
    order_fulfil,
    order_revoke,
)
from licensing.services.licenses import (
    Verdict,
    license_issue,
    license_key_generate,
    license_reissue,
    license_revoke,
    license_verify,
    licenses_revoke_for_order,
)

__all__ = [
    "LICENSING_WORKER",
    "PACKAGE_FORMAT",
    "DeliveryAccess",
    "DeliveryNotReady",
    "DownloadGone",
    "PackagingFailed",
    "Verdict",
    "buyer_delivery_key_set",
    "deliveries_withdraw_for_order",
    "delivery_access",
    "delivery_context",
    "delivery_create",
    "delivery_failure_record",
    "delivery_package",
    "delivery_regenerate",
    "download_link_open",
    "fulfilment_due",
    "license_issue",
    "license_key_generate",
    "license_reissue",
    "license_revoke",
    "license_verify",
    "licenses_revoke_for_order",
    "order_fulfil",
    "order_revoke",
    "proof_fingerprint",
    "proof_payload",
]
