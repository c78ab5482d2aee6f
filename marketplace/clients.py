"""Who is asking: the client address of a request, as the rate limits see it.

Behind MARKETPLACE_NUM_PROXIES trusted proxies the client is the X-Forwarded-For entry the
outermost of them added, counted from the right; entries further left are the client's own say
and are not trusted. With no proxies (the default) it is the connection's address. It is DRF's
throttle ident itself (BaseThrottle.get_ident), so a download log and a rate limit name the
same client.
"""

import ipaddress

from django.http import HttpRequest
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle


def client_ident(request: HttpRequest | Request) -> str | None:
    """The client as DRF's throttles tell clients apart: not necessarily an IP address (it is
    whatever the trusted proxy wrote)."""
    return BaseThrottle().get_ident(request)  # type: ignore[arg-type]


def client_ip(request: HttpRequest | Request) -> str | None:
    """The client's IP address for a log: client_ident when it is an address, else the
    connection's own (a proxy that wrote something else is misconfigured; the log still names
    who connected). None only when the server gave no address at all."""
    for candidate in (client_ident(request), request.META.get("REMOTE_ADDR")):
        try:
            return str(ipaddress.ip_address((candidate or "").strip()))
        except ValueError:
            continue
    return None
