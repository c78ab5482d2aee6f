"""Telling a waiting request that its session changed (ready, failed, ended).

`Prefer: wait=N` holds a request until the session leaves `requested`/`starting`. With Redis as
the cache, the worker pushes one item on a per-session list once the change commits and the
request blocks on it (BLPOP): it answers within a millisecond of the commit, without polling the
database. With a cache other processes do not see (local memory, in dev), the request polls the
database every POLL_SECONDS instead. Either way the database row is what the answer reads: a lost
notification only costs the wait's end.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from django.core.cache import cache
from django.db import transaction

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.01
# The list outlives a change no request waits for by this much, then goes.
KEY_SECONDS = 30


def _redis() -> Any | None:
    client = getattr(cache, "client", None)
    if client is None or not hasattr(client, "get_client"):
        return None
    return client.get_client(write=True)


def _key(session_id: Any) -> str:
    return cache.make_key(f"preview-changed:{session_id}")


def session_changed(session_id: Any) -> None:
    """After the caller's transaction commits, wakes whoever waits on the session."""
    transaction.on_commit(lambda: _push(session_id))


def _push(session_id: Any) -> None:
    from redis.exceptions import RedisError

    redis = _redis()
    if redis is None:
        return
    key = _key(session_id)
    try:
        redis.pipeline(transaction=False).rpush(key, 1).expire(key, KEY_SECONDS).execute()
    except RedisError:
        logger.warning("preview %s: the wake-up was not sent (the cache is down)", session_id)


def wait_changed(session_id: Any, seconds: float) -> None:
    """Returns when the session may have changed or after `seconds`, whichever is first."""
    from redis.exceptions import RedisError

    redis = _redis()
    if redis is not None and seconds >= 0.01:
        try:
            redis.blpop([_key(session_id)], timeout=seconds)
            return
        except RedisError:
            pass  # polled instead, below
    time.sleep(min(POLL_SECONDS, max(seconds, 0)))
