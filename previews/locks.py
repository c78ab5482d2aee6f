"""Locks of previews, and the one order they are taken in:

    SKU (catalog.services.locks.sku_lock) → the preview pool → sessions, in primary-key order
    → the audit chain head (audit_append, always last)

The pool lock serialises everything that counts open sessions against the limits (a new
session, a pause, "Isolate pool"), so two concurrent requests cannot both take the last place.
"""

from typing import Any

from django.db import connection

from previews.models import PreviewSession

# pg_advisory_xact_lock key: "preview-" as a number, fixed so every process agrees.
POOL_LOCK = 0x707265766965772D


def preview_pool_lock() -> None:
    """Takes the pool lock for the rest of the caller's transaction. On SQLite, transactions
    are IMMEDIATE (config.settings): a writer already excludes every other."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [POOL_LOCK])


def session_lock(session_id: Any) -> PreviewSession | None:
    """Locks one session for the caller's transaction and answers it as it is now (None if
    there is no such session)."""
    return (
        PreviewSession.objects.select_for_update(of=("self",))
        .select_related("material", "sku")
        .filter(pk=session_id)
        .first()
    )
