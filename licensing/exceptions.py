"""Licensing's domain errors, each with its code, title and HTTP status."""

from marketplace.exceptions import ApplicationError, Conflict, ServiceUnavailable


class LicenseNotIssued(Conflict):
    code = "license-not-issued"
    title = "The license is not issued yet"


class DeliveryNotReady(Conflict):
    code = "delivery-not-ready"
    title = "The delivery is not ready"


class DownloadGone(ApplicationError):
    code = "download-gone"
    title = "This download is no longer available"
    status = 410


class PackageUnavailable(ServiceUnavailable):
    """Storage could not open the package: answered with `Retry-After:
    MARKETPLACE_OUTAGE_RETRY_AFTER_SECONDS` (and `retry_after` in the body), never with the
    storage's own error, which names its bucket or folder."""

    code = "package-unavailable"
    title = "The package cannot be read right now"


class KeyServiceUnavailable(ServiceUnavailable):
    """KMS could not unwrap the delivery's data key: answered like an outage, never with
    KMS's own error, which names its endpoint and key."""

    code = "key-service-unavailable"
    title = "The key service cannot be reached right now"


class DeliveryKeyUnusable(ApplicationError):
    """The delivery's data key cannot be unwrapped although the key service answered (KMS
    refuses it, or the key-store master key is not the one that wrapped it): the platform's
    fault, not the buyer's, and no retry cures it. Logged with the cause; the answer names
    neither key nor service."""

    code = "delivery-key-unusable"
    title = "The means to decrypt this package cannot be produced"
    status = 500
