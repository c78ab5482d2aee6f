"""Maintenance mode (`MAINTENANCE_MODE=1`): finalization stops, reads go on.

Every place that finalizes asks `maintenance_on()`: checkout refuses with 503
(`MaintenanceMode`), staff reissues and regenerations are refused, and issuing licenses,
creating deliveries, packaging and the fulfilment sweep do nothing: the sweep comes back for
what was skipped once the mode is off.
"""

from typing import Any

from django.conf import settings

from marketplace.exceptions import ApplicationError


class MaintenanceMode(ApplicationError):
    """Answered with `Retry-After: MARKETPLACE_MAINTENANCE_RETRY_AFTER_SECONDS` (and the same
    `retry_after` in the body)."""

    code = "maintenance"
    title = "The platform is in maintenance"
    status = 503

    def __init__(self, detail: str, **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        self.extra.setdefault("retry_after", settings.MAINTENANCE_RETRY_AFTER_SECONDS)


def maintenance_on() -> bool:
    return bool(settings.MAINTENANCE_MODE)
