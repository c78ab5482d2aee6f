"""Rate limits of the API: a DRF throttle on the atomic counters of marketplace.ratelimit.

Every API request counts against the limit of its caller (`anon` per client address, `user` per
signed-in buyer); a buyer's writes also against `buyer_write`; and a view that names a
`throttle_scope` (checkout, download links, the license check) against that scope's limit too,
per buyer or, for anonymous callers, per address. docs/api.md lists them.
"""

from typing import TYPE_CHECKING

from rest_framework.permissions import SAFE_METHODS
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from marketplace import ratelimit

if TYPE_CHECKING:  # rest_framework.views imports this module while it defines APIView
    from rest_framework.views import APIView

# Scopes of POSTs that change nothing: like reads, they go on while the counters are
# unreachable.
READ_SCOPES = frozenset({"license_verify"})

# A view whose GET writes (minting a download link opens a download session, and on S3 counts
# and logs a download) sets `throttle_fail_closed = True`: its requests are refused, like
# writes, while the counters are unreachable, though they stay out of the buyer's write budget.


def _signed_in(request: Request) -> bool:
    return bool(request.user and request.user.is_authenticated)


def _caller(request: Request) -> str:
    return f"u:{request.user.pk}" if _signed_in(request) else ratelimit.client_of(request)


def _is_write(request: Request, view: "APIView") -> bool:
    return request.method not in SAFE_METHODS and (
        getattr(view, "throttle_scope", None) not in READ_SCOPES
    )


def budgets_of(request: Request, view: "APIView") -> list[tuple[str, str]]:
    """Each (scope, who) this request counts against."""
    who = _caller(request)
    if _signed_in(request):
        budgets = [("user", who)]
        if _is_write(request, view):
            budgets.append(("buyer_write", who))
    else:
        budgets = [("anon", who)]
    scope = getattr(view, "throttle_scope", None)
    if scope:
        budgets.append((scope, who))
    return budgets


class RequestRateThrottle(BaseThrottle):
    """Every limit of the request (budgets_of), counted in one atomic step: against all of them
    if none is used up, else against none, so that a request refused by one limit (a checkout
    past its own) spends nothing of the others (the buyer's write budget). Over a limit it
    raises ratelimit.RateLimited (429 with Retry-After, naming the limit) rather than returning
    False."""

    def allow_request(self, request: Request, view: "APIView") -> bool:
        fails_closed = _is_write(request, view) or getattr(view, "throttle_fail_closed", False)
        ratelimit.hit_all(budgets_of(request, view), write=fails_closed)
        return True

    def wait(self) -> float | None:
        return None
