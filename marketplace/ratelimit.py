"""Rate limits on atomic counters, shared by the API's throttles and the plain paths.

A limit `N/period` (a scope's entry in REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]) lets one
client make N requests in a window that opens with its first request and lasts the period;
from the (N+1)th request until the window closes the answer is a 429 whose Retry-After is the
time left. A client can therefore send at most 2N requests in any one period that straddles the
end of a window, and never more than N in the window itself.

Each request is one atomic step in the store over every limit that applies to it, so
concurrent requests cannot all pass (as they did with DRF's own throttles, which read a list of
timestamps from the cache and wrote it back), and a request refused by one limit is counted
against none (docs/api.md: a refused request does nothing):

- with Redis as the cache (`MARKETPLACE_REDIS_URL`), a Lua script that checks every counter
  and, only if none is used up, increments each and sets its expiry when it is new: one round
  trip per request, shared by every process;
- with the local-memory cache (the embedded defaults), the same under a lock in this process,
  so the limits hold per process.

When Redis cannot be reached, API requests that change something are refused (503
`cache-unavailable`): a limit that fails open is no limit during an outage an attacker can
cause. Reads go on unlimited (fail open), as the rest of the platform serves them from the
database while the cache is down; so do the license check (it changes nothing) and the paths
of PATH_LIMITS (see there).
"""

import hashlib
import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from typing import Any

from django.conf import settings
from django.core.cache import caches
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse
from redis.commands.core import Script

from marketplace.exceptions import ApplicationError, ServiceUnavailable

logger = logging.getLogger(__name__)

PERIODS = {
    "s": 1,
    "sec": 1,
    "second": 1,
    "m": 60,
    "min": 60,
    "minute": 60,
    "h": 3600,
    "hour": 3600,
    "d": 86400,
    "day": 86400,
}

# After a failed call the store is taken as down for this long: while it is, requests are
# answered without asking it, so that with its replies lost (each call then waits for the
# cache's socket timeout, 2 s) at most one request per process in this time waits, and the
# outage is logged once per period rather than on every request. As long as a refused write is
# told to wait (Retry-After), so that its retry finds the store asked again.
STORE_DOWN_SECONDS = 5
STORE_DOWN_RETRY_AFTER = STORE_DOWN_SECONDS


class RateLimited(ApplicationError):
    code = "throttled"
    title = "Too many requests"
    status = 429


class StaffLoginLocked(RateLimited):
    code = "login-locked"
    title = "Signing in is locked"


class CacheUnavailable(ServiceUnavailable):
    code = "cache-unavailable"
    title = "The cache is unavailable"

    def default_retry_after(self) -> int:
        return STORE_DOWN_RETRY_AFTER


@dataclass(frozen=True)
class Rate:
    limit: int
    seconds: int

    def __str__(self) -> str:
        unit = {1: "s", 60: "min", 3600: "hour", 86400: "day"}[self.seconds]
        return f"{self.limit}/{unit}"


@lru_cache(maxsize=64)
def parse_rate(text: str) -> Rate:
    """`N/s`, `N/min`, `N/hour` or `N/day` (DRF's form)."""
    count, _, period = text.strip().partition("/")
    seconds = PERIODS.get(period.strip().lower())
    if not count.strip().isdigit() or seconds is None or int(count) < 1:
        raise ImproperlyConfigured(
            f"a rate is N/s, N/min, N/hour or N/day with N at least 1, not {text!r}"
        )
    return Rate(limit=int(count), seconds=seconds)


def rate_of(scope: str) -> Rate:
    # Read on each request: the settings may change under a test, and DRF reloads its own.
    from rest_framework.settings import api_settings

    rates = api_settings.DEFAULT_THROTTLE_RATES
    if scope not in rates:
        raise ImproperlyConfigured(f'no rate for the scope {scope!r} in "DEFAULT_THROTTLE_RATES"')
    return parse_rate(rates[scope])


def client_of(request: HttpRequest) -> str:
    """The client address, as the MARKETPLACE_NUM_PROXIES trusted proxies report it."""
    from marketplace.clients import client_ident

    return client_ident(request) or ""


class StoreUnavailable(Exception):
    """The counters could not be read or written."""


# --- Stores -------------------------------------------------------------------------------------

# KEYS: one counter per limit; ARGV: each one's limit and window (ms), in turn. Returns
# {0, 0} when every counter was below its limit and has been incremented, else {i, ttl}: the
# first used-up counter (1-based) and the milliseconds until its window closes; nothing is
# incremented then.
_HIT_SCRIPT = """
for i, key in ipairs(KEYS) do
  local count = tonumber(redis.call('GET', key) or '0')
  if count >= tonumber(ARGV[2 * i - 1]) then
    local ttl = redis.call('PTTL', key)
    if ttl < 0 then
      redis.call('PEXPIRE', key, ARGV[2 * i])
      ttl = tonumber(ARGV[2 * i])
    end
    return {i, ttl}
  end
end
for i, key in ipairs(KEYS) do
  redis.call('INCR', key)
  if redis.call('PTTL', key) < 0 then
    redis.call('PEXPIRE', key, ARGV[2 * i])
  end
end
return {0, 0}
"""


# One Script for the process: it keeps the SHA, so each call is one EVALSHA (bytes: a Script
# made without a client cannot encode text).
_HIT = Script(None, _HIT_SCRIPT.encode())


class _RedisCounters:
    def __init__(self, cache: Any) -> None:
        self.cache = cache

    def hit(self, counters: Sequence[tuple[str, int, int]]) -> tuple[int, float] | None:
        from redis.exceptions import RedisError

        args: list[int] = []
        for _, limit, seconds in counters:
            args += [limit, seconds * 1000]
        try:
            client = self.cache.client.get_client(write=True)
            index, ttl_ms = _HIT(
                keys=[self.cache.make_key(key) for key, _, _ in counters], args=args, client=client
            )
        except RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc
        return None if int(index) == 0 else (int(index) - 1, int(ttl_ms) / 1000)

    def peek(self, key: str) -> tuple[int, float]:
        from redis.exceptions import RedisError

        try:
            pipe = self.cache.client.get_client(write=True).pipeline(transaction=False)
            name = self.cache.make_key(key)
            count, ttl_ms = pipe.get(name).pttl(name).execute()
        except RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc
        return int(count or 0), max(0, int(ttl_ms)) / 1000


class _LocalCounters:
    """Per-process counters for the local-memory cache. Not the cache itself: it culls entries
    when full, and junk in the cache would then reset the limits."""

    # Closed windows are dropped once this many are kept, at most once a second.
    SWEEP_AT = 10_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._windows: dict[str, tuple[int, float]] = {}
        self._swept_at = 0.0

    def hit(self, counters: Sequence[tuple[str, int, int]]) -> tuple[int, float] | None:
        """As the Redis script: None when each counter was below its limit and is now
        incremented, else the index of the first used-up one and the seconds it has left."""
        now = time.monotonic()
        with self._lock:
            if len(self._windows) >= self.SWEEP_AT and now - self._swept_at > 1:
                self._windows = {k: w for k, w in self._windows.items() if w[1] > now}
                self._swept_at = now
            windows = []
            for index, (key, limit, seconds) in enumerate(counters):
                count, ends = self._windows.get(key, (0, 0.0))
                if ends <= now:
                    count, ends = 0, now + seconds
                if count >= limit:
                    return index, ends - now
                windows.append((key, count, ends))
            for key, count, ends in windows:
                self._windows[key] = (count + 1, ends)
        return None

    def peek(self, key: str) -> tuple[int, float]:
        now = time.monotonic()
        with self._lock:
            count, ends = self._windows.get(key, (0, 0.0))
        return (count, ends - now) if ends > now else (0, 0.0)

    def clear(self) -> None:
        with self._lock:
            self._windows.clear()


local_counters = _LocalCounters()
_down_until: dict[str, float] = {}


def _store() -> tuple[str, Any]:
    cache = caches["default"]
    if hasattr(cache, "client") and hasattr(cache.client, "get_client"):  # django-redis
        return str(settings.CACHES["default"]["LOCATION"]), _RedisCounters(cache)
    return "local", local_counters


def _key(scope: str, who: str) -> str:
    if len(who) > 64:  # a forwarded address is at most that; anything longer is not kept as is
        who = hashlib.sha256(who.encode()).hexdigest()
    return f"ratelimit:{scope}:{who}"


def hit(scope: str, who: str, *, write: bool) -> None:
    """Counts one request of `who` (a client address, or `u:<id>` for a signed-in caller)
    against `scope`'s limit; see hit_all."""
    hit_all([(scope, who)], write=write)


def hit_all(budgets: Sequence[tuple[str, str]], *, write: bool) -> None:
    """Counts one request against each (scope, who) of `budgets`, in one atomic step: against
    all of them if none is used up, else against none.

    Raises RateLimited, naming the first used-up scope, with `retry_after` in seconds;
    CacheUnavailable when the counters cannot be reached and the request is a `write`. A read
    then goes on.
    """
    if not budgets:
        return
    _hit_at_rates(budgets, [rate_of(scope) for scope, _ in budgets], write=write)


def hit_at(scope: str, who: str, rate: Rate, *, write: bool) -> None:
    """As hit, at a rate the caller reads from a setting of its own rather than from a scope of
    DEFAULT_THROTTLE_RATES (the previews' per-session limit, MARKETPLACE_PREVIEW_REQUEST_RATE:
    previews.serving)."""
    _hit_at_rates([(scope, who)], [rate], write=write)


def _hit_at_rates(
    budgets: Sequence[tuple[str, str]], rates: Sequence[Rate], *, write: bool
) -> None:
    counters = [
        (_key(scope, who), rate.limit, rate.seconds)
        for (scope, who), rate in zip(budgets, rates, strict=True)
    ]
    location, store = _store()
    try:
        if time.monotonic() < _down_until.get(location, 0.0):
            raise StoreUnavailable("marked down after a recent failure")
        refused = store.hit(counters)
    except StoreUnavailable as exc:
        if time.monotonic() >= _down_until.get(location, 0.0):
            _down_until[location] = time.monotonic() + STORE_DOWN_SECONDS
            logger.warning("rate-limit counters unreachable, writes refused: %s", exc)
        if write:
            raise CacheUnavailable(
                "Rate limits cannot be checked while the cache is unavailable, so changes are "
                "refused; reads go on. Try again shortly."
            ) from None
        return
    if refused is not None:
        index, remaining = refused
        scope, rate = budgets[index][0], rates[index]
        retry_after = max(1, math.ceil(remaining))
        raise RateLimited(
            f"More than {rate} ({scope}); try again in {retry_after} s.",
            extra={"limit": scope, "retry_after": retry_after},
        )


def spent(scope: str, who: str) -> int | None:
    """Whether `who` has used up `scope`'s limit already, without counting a request: the
    seconds until its window closes, or None (also when the counters are unreachable)."""
    rate = rate_of(scope)
    location, store = _store()
    if time.monotonic() < _down_until.get(location, 0.0):
        return None
    try:
        count, remaining = store.peek(_key(scope, who))
    except StoreUnavailable:
        _down_until[location] = time.monotonic() + STORE_DOWN_SECONDS
        return None
    return max(1, math.ceil(remaining)) if count >= rate.limit else None


# --- Paths outside the API's throttles ----------------------------------------------------------


@dataclass(frozen=True)
class PathLimit:
    path: str
    scope: str
    # Methods counted; None counts every method.
    methods: frozenset[str] | None = None
    # True: the path and everything under it (`/health`, `/health/live`).
    subtree: bool = False

    def counts(self, path: str, method: str) -> bool:
        """Whether a request of `method` to `path` counts against this limit (also what the
        OpenAPI document's 429s say, marketplace.api.schema)."""
        if path != self.path and not (self.subtree and path.startswith(self.path + "/")):
            return False
        return self.methods is None or method in self.methods

    def matches(self, request: HttpRequest) -> bool:
        return self.counts(request.path_info, request.method or "")


# Paths of the HTTP contract (docs/api.md) that DRF's throttles do not see, each limited per
# client address. None fails closed while the counters are unreachable: the webhook writes
# nothing that Stripe's signature does not vouch for (and an event is acknowledged through
# outages, docs/payments.md); staff sign-in goes on, as staff may be needed to handle the outage,
# and django-axes still locks an account out per address from its counts in the database.
PATH_LIMITS = (
    PathLimit("/marketplace/stripe/webhook", "webhook"),
    PathLimit("/health", "health", subtree=True),
    PathLimit("/metrics", "metrics"),
    PathLimit("/admin/login/", "staff_login", methods=frozenset({"POST"})),
    # A sign-in through the identity provider is one of each (accounts/urls.py): each callback
    # costs a token exchange at the provider.
    PathLimit("/oidc/authenticate/", "staff_login"),
    PathLimit("/oidc/callback/", "staff_login"),
)


class RateLimitMiddleware:
    """Applies PATH_LIMITS before the view runs; the API's views are limited by their DRF
    throttles (marketplace/api/throttling.py) instead, which know the signed-in buyer.

    It also counts the API's 401s to requests that carry credentials (`auth_failure`, per
    address): DRF authenticates before it throttles, so a request with a made-up token is
    answered, after a database look-up, without counting against any limit. Once an address has
    used up that limit, its requests with credentials are refused until the window closes,
    before any look-up. The count is taken where the credentials failed, and its answer decides:
    concurrent requests all pass the check before the view, but only as many failures as the
    limit allows are answered 401, the rest 429.
    """

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        from marketplace.api.problems import error_response
        from marketplace.middleware import error_answer

        for limit in PATH_LIMITS:
            if limit.matches(request):
                try:
                    hit(limit.scope, client_of(request), write=False)
                except RateLimited as exc:
                    # Staff sign-in's refusal is a page, as the admin's form is.
                    return error_answer(request, exc)
                break
        credentials = request.path_info.startswith("/api/") and (
            "HTTP_AUTHORIZATION" in request.META
        )
        if credentials:
            retry_after = spent("auth_failure", client_of(request))
            if retry_after is not None:
                return error_response(request, _auth_failures_spent(retry_after))
        response = self.get_response(request)
        if credentials and response.status_code == 401:
            try:
                hit("auth_failure", client_of(request), write=False)
            except RateLimited as exc:
                return error_response(request, _auth_failures_spent(exc.extra["retry_after"]))
        return response


def _auth_failures_spent(retry_after: int) -> RateLimited:
    rate = rate_of("auth_failure")
    return RateLimited(
        f"More than {rate} requests with credentials that were refused (auth_failure); try "
        f"again in {retry_after} s.",
        extra={"limit": "auth_failure", "retry_after": retry_after},
    )


# --- Staff sign-in lockout (django-axes) --------------------------------------------------------


def staff_lockout_response(
    request: HttpRequest, original_response: Any = None, credentials: Any = None
) -> HttpResponse:
    """django-axes' answer to a sign-in refused during a lockout (AXES_LOCKOUT_CALLABLE): a
    plain page under /admin/, problem details elsewhere."""
    from marketplace.middleware import error_answer

    cool_off = settings.AXES_COOLOFF_TIME
    seconds = int(cool_off.total_seconds()) if isinstance(cool_off, timedelta) else 0
    minutes = max(1, math.ceil(seconds / 60))
    exc = StaffLoginLocked(
        f"Too many failed sign-ins for this account from your address; try again in "
        f"{minutes} minutes.",
        extra={"retry_after": seconds},
    )
    return error_answer(request, exc)
