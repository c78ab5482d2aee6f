"""The one HTTP send of a partner webhook, with its guard against server-side request forgery.

- The URL must be `https`. Plain `http` is accepted only to a loopback address while the
  test-only setting PARTNER_WEBHOOK_ALLOW_LOOPBACK is on (the suite's local receiver).
- Every address the host resolves to must be a global unicast address: loopback, private,
  link-local, shared (CGNAT), multicast, reserved and unspecified addresses are refused
  (loopback allowed only with the test-only setting). The check runs when an endpoint is
  registered and again at each send, and the connection is then made to the address just
  checked (TLS still verifies the certificate against the host name), so a DNS answer that
  changes between the check and the connection (rebinding) reaches nothing else.
- Redirects are not followed (http.client follows none): a 3xx is a failed attempt.
- Connect timeout PARTNER_WEBHOOK_CONNECT_TIMEOUT_SECONDS, and a deadline for the whole
  exchange, PARTNER_WEBHOOK_TIMEOUT_SECONDS, so a slow endpoint holds a worker no longer.
- At most RESPONSE_READ_LIMIT bytes of the answer are read (kept: the first 200 characters).
"""

import http.client
import ipaddress
import socket
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings

RESPONSE_READ_LIMIT = 64 * 1024
RESPONSE_KEPT = 200


class EndpointRefused(Exception):
    """The URL or the address it resolves to may not be called."""


class HostUnresolved(EndpointRefused):
    """The host does not resolve (now): refused at registration, retried at a send."""


@dataclass(frozen=True)
class Answer:
    status: int | None
    error: str
    latency_ms: int
    body: str = ""
    # The guard refused the URL or its address: nothing was sent, and sending again will not
    # help until the endpoint changes.
    refused: bool = False


def _address_allowed(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return bool(settings.PARTNER_WEBHOOK_ALLOW_LOOPBACK)
    return ip.is_global and not ip.is_multicast and not ip.is_reserved


def url_check(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path) of an acceptable URL; EndpointRefused naming what is wrong.
    Does not resolve the host."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http"):
        raise EndpointRefused("The URL must start with https://.")
    if not parts.hostname:
        raise EndpointRefused("The URL has no host.")
    if parts.username or parts.password:
        raise EndpointRefused("The URL may not carry a user name or password.")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise EndpointRefused("The URL's port is not a number from 1 to 65535.") from None
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return parts.scheme, parts.hostname, port, path


def resolve_checked(host: str, port: int, scheme: str) -> str:
    """The first address of `host`, once every address it resolves to passed the check;
    EndpointRefused otherwise (one bad address is enough: which one a client uses is not
    ours to choose)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise HostUnresolved(f"The host {host} does not resolve ({exc}).") from None
    addresses = [str(info[4][0]) for info in infos]
    if not addresses:
        raise HostUnresolved(f"The host {host} does not resolve.")
    for address in addresses:
        if not _address_allowed(address):
            raise EndpointRefused(
                f"The host {host} resolves to {address}, a loopback, private, link-local or "
                "reserved address: only public addresses are called."
            )
    if scheme == "http" and not all(ipaddress.ip_address(a).is_loopback for a in addresses):
        raise EndpointRefused("The URL must start with https://.")
    return addresses[0]


def endpoint_url_check(url: str) -> None:
    """What registering an endpoint checks: the URL's form and the addresses it resolves to
    now. EndpointRefused with the reason."""
    scheme, host, port, _path = url_check(url)
    if scheme == "http" and not settings.PARTNER_WEBHOOK_ALLOW_LOOPBACK:
        raise EndpointRefused("The URL must start with https://.")
    resolve_checked(host, port, scheme)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """Connects to `address` (already checked) while verifying TLS against the host name."""

    def __init__(self, host: str, port: int, *, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, *, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


def post(url: str, *, body: bytes, headers: dict[str, str]) -> Answer:
    """POSTs `body` once. Never raises for what the endpoint or the network does: a refused
    address, a timeout, a reset or garbage come back as an Answer with no status and the
    error; an HTTP answer with its status."""
    started = time.monotonic()
    deadline = started + settings.PARTNER_WEBHOOK_TIMEOUT_SECONDS

    def elapsed_ms() -> int:
        return int((time.monotonic() - started) * 1000)

    try:
        scheme, host, port, path = url_check(url)
        address = resolve_checked(host, port, scheme)
    except HostUnresolved as exc:
        return Answer(None, str(exc), elapsed_ms())
    except EndpointRefused as exc:
        return Answer(None, f"refused: {exc}", elapsed_ms(), refused=True)
    connection_class = _PinnedHTTPSConnection if scheme == "https" else _PinnedHTTPConnection
    connection = connection_class(
        host, port, address=address, timeout=settings.PARTNER_WEBHOOK_CONNECT_TIMEOUT_SECONDS
    )
    try:
        connection.connect()
        # Kept: http.client lets go of connection.sock once the answer is to close it.
        sock = connection.sock
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        connection.request(
            "POST",
            path,
            body=body,
            headers={**headers, "Content-Type": "application/json", "User-Agent": "marketplace"},
        )
        response = connection.getresponse()
        chunks: list[bytes] = []
        read = 0
        while read < RESPONSE_READ_LIMIT:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break  # the status is what counts; the rest of a slow body is not waited for
            sock.settimeout(remaining)
            chunk = response.read1(min(16 * 1024, RESPONSE_READ_LIMIT - read))
            if not chunk:
                break
            chunks.append(chunk)
            read += len(chunk)
        text = b"".join(chunks)[:RESPONSE_KEPT].decode("utf-8", "replace").replace("\x00", "")
        return Answer(response.status, "", elapsed_ms(), text)
    except TimeoutError:
        return Answer(None, "timeout", elapsed_ms())
    except (OSError, http.client.HTTPException, ValueError) as exc:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        return Answer(None, f"{type(exc).__name__}: {detail}"[:300], elapsed_ms())
    finally:
        connection.close()
