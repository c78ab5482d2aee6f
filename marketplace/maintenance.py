"""Maintenance mode (`MAINTENANCE_MODE=1`): finalization stops, reads go on.

Every place that finalizes asks `maintenance_on()`: checkout refuses with 503
(`MaintenanceMode`), staff reissues and regenerations are refused, and issuing licenses,
creating deliveries, packaging and the fulfilment sweep do nothing: the sweep comes back for
what was skipped once the mode is off.
"""

from django.conf import settings

from marketplace.exceptions import ApplicationError


class MaintenanceMode(ApplicationError):
    code = "maintenance"
    title = "The platform is in maintenance"
    status = 503


def maintenance_on() -> bool:
    return bool(settings.MAINTENANCE_MODE)
