"""Cached catalog reads.

A key is made of the endpoint, its path and its validated query in one spelling (the API views
build that; catalog/api/views.py), never the raw URL, so junk in a query string adds no entry.

Every key embeds generation numbers: the catalog's, which retires every cached read, and those
of the **scopes** the read shows (SCOPES below): the SKUs on sale as a whole, one SKU, one
category's subtree, one partner. A write retires, once its transaction commits, the scopes it
can have changed: a SKU's write its own page, the lists of its category (and every category
above it) and of its partner, and the lists of all SKUs, categories and partners (which show
counts); a write to a partner, a category or a signing key retires everything, since a name
or a path shows on many pages and such writes are rare. A generation that is missing (never
read, retired, expired or evicted) restarts from the clock, never from a value older entries
may carry.
"""

import hashlib
import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlencode

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from prometheus_client import Counter

from catalog.models import Category, Partner, Sku, SkuStatus

logger = logging.getLogger(__name__)

GENERATION_KEY = "catalog:generation"
# A scope's generation: "skus" (every list of SKUs on sale, and the category and partner lists,
# whose counts follow them), "sku:<slug>", "category:<slug>", "partner:<slug>". Outside the
# `catalog:` keys, which are the cached answers (and the catalog's generation).
SCOPE_KEY = "catalog-scope:{}"
ALL_SKUS = "skus"
# A scope's generation outlives the answers cached under it many times over; when it expires
# all that is lost is a page or two answered from the database once more.
SCOPE_SECONDS = 86_400

catalog_cache_requests = Counter(
    "marketplace_catalog_cache_requests_total",
    "Catalog API reads answered from the cache (hit) or the database (miss).",
    ["result"],
)

_MISSING = object()
T = TypeVar("T")


def sku_scope(slug: str) -> str:
    return f"sku:{slug}"


def category_scope(slug: str) -> str:
    return f"category:{slug}"


def partner_scope(slug: str) -> str:
    return f"partner:{slug}"


def _generations(scopes: Collection[str]) -> tuple[list[int], list[str]]:
    """The catalog's generation and each scope's, read in one round trip; and the scope keys
    this call created (a scope nobody had read since it was last retired)."""
    keys = [GENERATION_KEY, *(SCOPE_KEY.format(scope) for scope in scopes)]
    found = cache.get_many(keys)
    created: list[str] = []
    values: list[int] = []
    for key in keys:
        value = found.get(key)
        if value is None:
            timeout = None if key == GENERATION_KEY else SCOPE_SECONDS
            if cache.add(key, time.time_ns(), timeout=timeout) and key != GENERATION_KEY:
                created.append(key)
            value = cache.get(key) or time.time_ns()
        values.append(int(value))
    return values, created


def _bump() -> None:
    try:
        cache.incr(GENERATION_KEY)
    except ValueError:  # evicted: restart from the clock
        cache.set(GENERATION_KEY, time.time_ns(), timeout=None)


def _scopes_of(shown: Iterable[tuple[str, int, int]]) -> set[str]:
    """The scopes whose answers show SKUs (slug, category id, partner id): their own pages, the
    lists of their category and of every category above it, and of their partner."""
    shown = list(shown)
    paths = Category.objects.filter(pk__in={c for _, c, _ in shown}).values_list("path", flat=True)
    partners = Partner.objects.filter(pk__in={p for _, _, p in shown}).values_list(
        "slug", flat=True
    )
    scopes = {ALL_SKUS, *(sku_scope(slug) for slug, _, _ in shown)}
    scopes.update(category_scope(slug) for path in paths for slug in path.split("/") if slug)
    scopes.update(partner_scope(slug) for slug in partners)
    return scopes


def _retire(shown: list[tuple[str, int, int]]) -> None:
    try:
        scopes = _scopes_of(shown)
    except Exception:  # the database went away after the commit: retire everything instead
        logger.exception("could not tell which catalog pages a write changed; retiring all")
        _bump()
        return
    # A deleted generation restarts from the clock at its next read.
    cache.delete_many([SCOPE_KEY.format(scope) for scope in scopes])


def catalog_changed(*skus: Sku | None) -> None:
    """Retires, once the current transaction commits, the cached reads a write can change.

    Without arguments every cached read (a partner, a category, a signing key). With the SKUs
    a write changed, in every state it knows them (before and after; None is skipped), only
    the answers those SKUs show on. A draft shows nowhere, and nothing becomes a draft again,
    so a write to a draft retires nothing.
    """
    if not skus:
        transaction.on_commit(_bump)
        return
    shown = [
        (sku.slug, sku.category_id, sku.partner_id)
        for sku in skus
        if sku is not None and sku.status != SkuStatus.DRAFT
    ]
    if shown:
        transaction.on_commit(partial(_retire, shown))


def cache_key(
    kind: str, *, base_url: str, params: Mapping[str, str], scopes: Collection[str]
) -> tuple[str, list[str]]:
    """The key of a read and the scope generations made for it (see cached).

    `params` are the validated query, each value in one spelling, defaults filled in; they
    are sorted here, so their order does not matter. `scopes` are what the answer shows."""
    query = urlencode(sorted(params.items()))
    digest = hashlib.blake2b(f"{base_url}?{query}".encode(), digest_size=16).hexdigest()
    (generation, *scoped), created = _generations(scopes)
    return f"catalog:{generation}:{kind}:{'.'.join(map(str, scoped))}:{digest}", created


def cache_get(key: str) -> Any:
    value = cache.get(key, _MISSING)
    catalog_cache_requests.labels(result="miss" if value is _MISSING else "hit").inc()
    return None if value is _MISSING else value


def cache_set(key: str, value: Any) -> None:
    cache.set(key, value, timeout=settings.CATALOG_CACHE_SECONDS)


def cached(
    kind: str,
    *,
    base_url: str,
    params: Mapping[str, str],
    scopes: Collection[str],
    build: Callable[[], T],
) -> T:
    """`build()`'s answer, from the cache when it holds it, else built and cached; always
    built, with no round trip to the cache, when MARKETPLACE_CATALOG_CACHE_SECONDS is 0.

    The generations are read before `build` reads the database, so an answer built from rows
    a concurrent write then changes is cached under generations that write retires. A read that
    `build` refuses (it raises: a 404, an unknown category) leaves no scope generation behind
    that it made, so junk slugs add no key either.
    """
    if settings.CATALOG_CACHE_SECONDS <= 0:
        return build()
    key, created = cache_key(kind, base_url=base_url, params=params, scopes=scopes)
    value = cache_get(key)
    if value is None:
        try:
            value = build()
        except BaseException:
            if created:
                # Deleting a generation only ever retires answers: safe whoever else read it.
                cache.delete_many(created)
            raise
        cache_set(key, value)
    return value
