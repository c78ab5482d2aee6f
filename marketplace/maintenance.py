"""Maintenance mode: finalization stops, reads go on.

It is on when `MAINTENANCE_MODE=1` forces it from the environment, or when staff turned the
runtime switch on (marketplace.models.RuntimeSwitch, changed only through a two-person
approval: docs/approvals.md). Every place that finalizes asks `maintenance_on()`: checkout
refuses with 503 (`MaintenanceMode`), staff reissues and regenerations are refused, and issuing
licenses, creating deliveries, packaging and the fulfilment sweep do nothing: the sweep comes
back for what was skipped once the mode is off.
"""

from uuid import UUID

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone

from marketplace.exceptions import ServiceUnavailable
from marketplace.models import RuntimeSwitch

# maintenance_on() runs on every checkout: the switch is read through the cache, and a change
# retires the cached value (in the writing transaction and again once it commits), so a
# process sees it within SWITCH_CACHE_SECONDS at worst (a cache that was unreachable when the
# value was retired).
SWITCH_CACHE_KEY = "marketplace:switch:maintenance"
SWITCH_CACHE_SECONDS = 5


class MaintenanceMode(ServiceUnavailable):
    """Answered with `Retry-After: MARKETPLACE_MAINTENANCE_RETRY_AFTER_SECONDS` (and the same
    `retry_after` in the body)."""

    code = "maintenance"
    title = "The platform is in maintenance"

    def default_retry_after(self) -> int:
        return settings.MAINTENANCE_RETRY_AFTER_SECONDS


def maintenance_on() -> bool:
    if settings.MAINTENANCE_MODE:
        return True
    return maintenance_switch_on()


def maintenance_switch_on() -> bool:
    """The runtime switch alone (the environment aside), cached for a few seconds."""
    # Kept as "on"/"off": the metrics-counting cache backends answer a falsy value as a miss.
    cached = cache.get(SWITCH_CACHE_KEY)
    if cached in ("on", "off"):
        return cached == "on"
    on = RuntimeSwitch.objects.filter(pk=RuntimeSwitch.SINGLETON, maintenance=True).exists()
    cache.set(SWITCH_CACHE_KEY, "on" if on else "off", timeout=SWITCH_CACHE_SECONDS)
    return on


def _retire_cached() -> None:
    cache.delete(SWITCH_CACHE_KEY)


def maintenance_switch_store(*, on: bool, changed_by: UUID | None) -> bool:
    """Sets the runtime switch, in the caller's transaction, which records the change in the
    audit log (this floor cannot). Answers whether it changed. Caller: the audited service
    accounts.services.maintenance_switch_set."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("maintenance_switch_store must run in the transaction of its audit")
    switch, _ = RuntimeSwitch.objects.select_for_update().get_or_create(pk=RuntimeSwitch.SINGLETON)
    if switch.maintenance == on:
        return False
    switch.maintenance = on
    switch.changed_at = timezone.now()
    switch.changed_by = changed_by
    switch.save()
    _retire_cached()
    # A reader between the write and the commit may have cached the old value again.
    transaction.on_commit(_retire_cached)
    return True
