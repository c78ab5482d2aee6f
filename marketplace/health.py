"""Readiness checks behind GET /health: each returns None when healthy or raises.

`health_report` runs them all and keeps each failure's error, which names hosts, ports,
folders or buckets: it is logged, and shown only by /health/details to staff or to the
holder of MARKETPLACE_HEALTH_TOKEN. `health_public` is what anyone may see: each check's name
and whether it passed.

Anyone may ask for /health, and a run opens a broker connection (up to 2 s when the broker
does not answer) and asks S3 for the bucket: `recent_health_report` answers every request from
one run for MARKETPLACE_HEALTH_CACHE_SECONDS, and requests that arrive during a run wait for it
rather than each starting its own, so callers cannot multiply the platform's calls to its
dependencies nor, during an outage, hold a thread each in a probe of their own.
"""

import logging
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery import current_app
from django.conf import settings
from django.core.cache import cache
from django.core.files.storage import FileSystemStorage, default_storage
from django.db import connection

logger = logging.getLogger(__name__)


class CheckFailed(Exception):
    pass


def check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


def check_cache() -> None:
    # The cache swallows connection errors (reads degrade to the database), so a probe must
    # read back what it wrote to notice an outage.
    key = f"health:{uuid.uuid4().hex}"
    cache.set(key, "ok", timeout=10)
    value = cache.get(key)
    cache.delete(key)
    if value != "ok":
        raise CheckFailed("the cache did not return the value just written")


def check_broker() -> None:
    transport_options = settings.CELERY_BROKER_TRANSPORT_OPTIONS
    if settings.CELERY_BROKER_URL.startswith("filesystem:"):
        for option in ("data_folder_in", "control_folder"):
            folder = Path(transport_options[option])
            if not folder.is_dir():
                raise CheckFailed(f"broker folder {folder} is missing")
        return
    with current_app.connection_for_write(
        url=settings.CELERY_BROKER_URL, connect_timeout=2
    ) as conn:
        conn.ensure_connection(max_retries=0)


def check_storage() -> None:
    if isinstance(default_storage, FileSystemStorage):
        location = Path(default_storage.location)
        if not location.is_dir():
            raise CheckFailed(f"storage folder {location} is missing")
        probe = location / f".health-{uuid.uuid4().hex}"
        probe.write_bytes(b"ok")
        probe.unlink()
        return
    bucket = default_storage.bucket
    bucket.meta.client.head_bucket(Bucket=bucket.name)


CHECKS: dict[str, Callable[[], None]] = {
    "database": check_database,
    "cache": check_cache,
    "broker": check_broker,
    "storage": check_storage,
}


def health_report() -> dict[str, Any]:
    checks: dict[str, dict[str, Any]] = {}
    for name, check in CHECKS.items():
        started = time.perf_counter()
        try:
            check()
        except Exception as exc:  # a probe reports every failure, whatever its kind
            error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
            checks[name] = {"ok": False, "error": error}
            logger.warning("health: the %s check failed: %s", name, error)
        else:
            checks[name] = {"ok": True}
        checks[name]["ms"] = round((time.perf_counter() - started) * 1000, 2)
    ok = all(check["ok"] for check in checks.values())
    return {
        "ok": ok,
        "checks": checks,
        "failed": [name for name, check in checks.items() if not check["ok"]],
        # Licenses are signed by the local key store outside production, by a KMS key or a
        # signing proxy in it.
        "signingConfigured": settings.KEYSTORE_BACKEND != "local" or settings.SERVICE_ENV == "dev",
    }


_lock = threading.Lock()
_recent: tuple[float, dict[str, Any]] | None = None


def recent_health_report() -> dict[str, Any]:
    """health_report, run at most once per HEALTH_CACHE_SECONDS in this process."""
    global _recent
    # Held during the run: a request that arrives meanwhile waits for its report.
    with _lock:
        if _recent is not None and time.monotonic() - _recent[0] < settings.HEALTH_CACHE_SECONDS:
            return _recent[1]
        report = health_report()
        _recent = (time.monotonic(), report)
        return report


def forget_report() -> None:
    """The next /health runs the checks afresh."""
    global _recent
    with _lock:
        _recent = None


def health_public(report: dict[str, Any]) -> dict[str, Any]:
    """The report without what only operators may see: no error text, no timings."""
    return {
        "ok": report["ok"],
        "checks": {name: {"ok": check["ok"]} for name, check in report["checks"].items()},
        "failed": report["failed"],
        "signingConfigured": report["signingConfigured"],
    }
