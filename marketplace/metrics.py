"""The Prometheus exposition (`/metrics`): who may read it, and what one scrape costs.

A scrape reads only what the processes have already recorded: no database query, no cache
call. Figures that need the database (orders by status, pending Finance postings) are set by
beat (`orders.tasks.orders_metrics_refresh`) and read here like any other gauge.

Rendering walks every series of every process (prometheus_client's multiprocess files when
PROMETHEUS_MULTIPROC_DIR is set), holding the GIL throughout: in the web process, scrapers
that come back-to-back starve the API's threads (bench/metrics). One rendering therefore
answers every scrape for `METRICS_CACHE_SECONDS`, and concurrent scrapes wait for the one
rendering under way instead of each starting its own.

Who may scrape (`scrape_refusal`): the holder of `MARKETPLACE_METRICS_TOKEN`, compared in
constant time; with no token configured, only a client on this machine and only in dev, so
that a newcomer's `curl http://127.0.0.1:8085/metrics` works and nothing else does. With
`MARKETPLACE_METRICS_PORT` set, the metrics are served by `scripts/manage metrics_serve` on a
listener of their own, and the web server's `/metrics` is 404.
"""

import hmac
import ipaddress
import json
import os
import threading
import time
from dataclasses import dataclass

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from marketplace.api.authentication import MalformedBearer, bearer_token
from marketplace.api.problems import problem_body, problem_response

REALM = 'Bearer realm="metrics"'

_lock = threading.Lock()
_rendered: tuple[float, bytes] | None = None


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def _render() -> bytes:
    if multiprocess_dir():
        # Every process's files, merged: the web server's, the workers', beat's.
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(REGISTRY)


def exposition() -> bytes:
    """The Prometheus text of every metric, rendered at most once per METRICS_CACHE_SECONDS."""
    global _rendered
    # Held while rendering: a scrape that arrives meanwhile waits for this rendering (blocked,
    # not holding the GIL) rather than starting one of its own.
    with _lock:
        if _rendered is not None and time.monotonic() - _rendered[0] < (
            settings.METRICS_CACHE_SECONDS
        ):
            return _rendered[1]
        body = _render()
        _rendered = (time.monotonic(), body)
        return body


@dataclass(frozen=True)
class Refusal:
    status: int
    detail: str
    www_authenticate: str | None = None


def _is_loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def scrape_refusal(
    authorization: str | None, client_address: str | None, *, own_listener: bool = False
) -> Refusal | None:
    """Why a scrape is refused (None: it may read the metrics).

    `authorization` is the request's Authorization header; `client_address` the peer's address
    (REMOTE_ADDR, never a forwarded header: only the dev rule reads it). On its own listener
    (`own_listener`, metrics_serve) and with no token set, the metrics are served to whoever
    reaches MARKETPLACE_METRICS_ADDR:PORT: keeping that interface off the public network is
    what protects them there."""
    token = settings.METRICS_TOKEN
    if not token:
        if own_listener or (settings.SERVICE_ENV == "dev" and _is_loopback(client_address)):
            return None
        return Refusal(
            403,
            "Without MARKETPLACE_METRICS_TOKEN the metrics are served only to this machine, "
            "in development.",
        )
    try:
        presented = bearer_token(authorization)
    except MalformedBearer:
        presented = None
    if presented is None:
        return Refusal(
            401, "Send the metrics token: Authorization: Bearer <token>.", www_authenticate=REALM
        )
    if not hmac.compare_digest(presented.encode(), token.encode()):
        return Refusal(
            401,
            "The metrics token is not the one configured.",
            www_authenticate=f'{REALM}, error="invalid_token"',
        )
    return None


def metrics(request: HttpRequest) -> HttpResponse:
    """GET /metrics on the web server."""
    if settings.METRICS_PORT:
        return problem_response(
            request, status=404, detail="The metrics are served on a port of their own."
        )
    if request.method not in ("GET", "HEAD"):
        return problem_response(
            request,
            status=405,
            detail="Use GET or HEAD.",
            headers={"Allow": "GET, HEAD"},
        )
    refusal = scrape_refusal(request.headers.get("Authorization"), request.META.get("REMOTE_ADDR"))
    if refusal is not None:
        response: HttpResponse = problem_response(
            request,
            status=refusal.status,
            detail=refusal.detail,
            headers={"WWW-Authenticate": refusal.www_authenticate}
            if refusal.www_authenticate
            else None,
        )
    else:
        response = HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)
    response["Cache-Control"] = "no-store"
    return response


def problem_bytes(status: int, detail: str, path: str) -> bytes:
    """A problem-details body, for the listener that answers outside Django's views."""
    return json.dumps(problem_body(status=status, detail=detail, instance=path)).encode()
