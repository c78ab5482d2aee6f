"""Maintenance mode (`MAINTENANCE_MODE=1`): finalization stops, reads go on.

Every place that finalizes asks `maintenance_on()`: checkout refuses with 503
(`MaintenanceMode`), staff reissues and regenerations are refused, and issuing licenses,
creating deliveries, packaging and the fulfilment sweep do nothing: the sweep comes back for
what was skipped once the mode is off.
"""

from django.conf import settings

from marketplace.exceptions import ServiceUnavailable


class MaintenanceMode(ServiceUnavailable):
    """Answered with `Retry-After: MARKETPLACE_MAINTENANCE_RETRY_AFTER_SECONDS` (and the same
    `retry_after` in the body)."""

    code = "maintenance"
    title = "The platform is in maintenance"

    def default_retry_after(self) -> int:
        return settings.MAINTENANCE_RETRY_AFTER_SECONDS


def maintenance_on() -> bool:
    return bool(settings.MAINTENANCE_MODE)
