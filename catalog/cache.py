"""Cached catalog reads.

A key is made of the endpoint, its path and its validated query in one spelling (the API views
build that; catalog/api/views.py), never the raw URL, so junk in a query string adds no entry.
Every key embeds a generation number; any catalog write bumps it once its transaction
commits, which retires every cached read at once without knowing which ones a change touched.
If the generation key is ever evicted, it restarts from the clock, never from a value that
older entries may carry.
"""

import hashlib
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from prometheus_client import Counter

GENERATION_KEY = "catalog:generation"

catalog_cache_requests = Counter(
    "marketplace_catalog_cache_requests_total",
    "Catalog API reads answered from the cache (hit) or the database (miss).",
    ["result"],
)

_MISSING = object()


def catalog_generation() -> int:
    generation = cache.get(GENERATION_KEY)
    if generation is None:
        cache.add(GENERATION_KEY, time.time_ns(), timeout=None)
        generation = cache.get(GENERATION_KEY) or time.time_ns()
    return int(generation)


def _bump() -> None:
    try:
        cache.incr(GENERATION_KEY)
    except ValueError:  # evicted: restart from the clock
        cache.set(GENERATION_KEY, time.time_ns(), timeout=None)


def catalog_changed() -> None:
    """Retires every cached catalog read once the current transaction commits."""
    transaction.on_commit(_bump)


def cache_key(kind: str, *, base_url: str, params: Mapping[str, str]) -> str:
    """`params` are the validated query, each value in one spelling, defaults filled in; they
    are sorted here, so their order does not matter."""
    query = urlencode(sorted(params.items()))
    digest = hashlib.blake2b(f"{base_url}?{query}".encode(), digest_size=16).hexdigest()
    return f"catalog:{catalog_generation()}:{kind}:{digest}"


def cache_get(key: str) -> Any:
    value = cache.get(key, _MISSING)
    catalog_cache_requests.labels(result="miss" if value is _MISSING else "hit").inc()
    return None if value is _MISSING else value


def cache_set(key: str, value: Any) -> None:
    cache.set(key, value, timeout=settings.CATALOG_CACHE_SECONDS)
