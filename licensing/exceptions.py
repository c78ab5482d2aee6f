"""Licensing's domain errors, each with its code, title and HTTP status."""

from marketplace.exceptions import ApplicationError, Conflict


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


class PackageUnavailable(ApplicationError):
    code = "package-unavailable"
    title = "The package cannot be read right now"
    status = 503
