"""Rate limits of the API: DRF throttles on the atomic counters of marketplace.ratelimit.

Every API request counts against the limit of its caller (`anon` per client address, `user` per
signed-in buyer); a buyer's writes also against `buyer_write`; and a view that names a
`throttle_scope` (checkout, download links, the license check) against that scope's limit too,
per buyer or, for anonymous callers, per address. docs/api.md lists them.
"""

from typing import TYPE_CHECKING, Any

from rest_framework.permissions import SAFE_METHODS
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from marketplace import ratelimit

if TYPE_CHECKING:  # rest_framework.views imports this module while it defines APIView
    from rest_framework.views import APIView

# Scopes of POSTs that change nothing: like reads, they go on while the counters are
# unreachable.
READ_SCOPES = frozenset({"license_verify"})


def _signed_in(request: Request) -> bool:
    return bool(request.user and request.user.is_authenticated)


def _caller(request: Request) -> str:
    return f"u:{request.user.pk}" if _signed_in(request) else ratelimit.client_of(request)


def _is_write(request: Request, view: "APIView") -> bool:
    return request.method not in SAFE_METHODS and (
        getattr(view, "throttle_scope", None) not in READ_SCOPES
    )


class RateThrottle(BaseThrottle):
    """One scope's limit on the caller. Over it, raises ratelimit.RateLimited (429 with
    Retry-After) at once rather than returning False, so that the answer names the limit and
    the limits after it do not count a refused request."""

    scope = ""

    def scope_for(self, request: Request, view: "APIView") -> str | None:
        return self.scope

    def allow_request(self, request: Request, view: "APIView") -> bool:
        scope = self.scope_for(request, view)
        if scope:
            ratelimit.hit(scope, _caller(request), write=_is_write(request, view))
        return True

    def wait(self) -> float | None:
        return None


class AnonymousRateThrottle(RateThrottle):
    """The `anon` rate (MARKETPLACE_THROTTLE_ANON), per client address, for anonymous
    callers."""

    def scope_for(self, request: Request, view: "APIView") -> str | None:
        return None if _signed_in(request) else "anon"


class SignedInRateThrottle(RateThrottle):
    """The `user` rate (MARKETPLACE_THROTTLE_USER), per buyer, for signed-in callers only."""

    def scope_for(self, request: Request, view: "APIView") -> str | None:
        return "user" if _signed_in(request) else None


class BuyerWriteRateThrottle(RateThrottle):
    """The `buyer_write` rate, per buyer, on every write of a signed-in caller: each one
    (checkout, setting or forgetting the delivery key, opening or ending a preview) appends an
    audit event, which is kept for good, so their number is bounded as one budget."""

    def scope_for(self, request: Request, view: "APIView") -> str | None:
        return "buyer_write" if _signed_in(request) and _is_write(request, view) else None


class EndpointRateThrottle(RateThrottle):
    """The view's own `throttle_scope`, if it names one."""

    def scope_for(self, request: Request, view: Any) -> str | None:
        return getattr(view, "throttle_scope", None)
