"""`/previews/{token}/…`: a sample's files, or the session's sandbox behind a proxy.

The token is the credential (as a download link is); no cookie or Authorization header of the
platform is read, and none is passed to a sandbox. Every answer carries a Content-Security-Policy
with `sandbox` (no `allow-same-origin`): the page runs in an opaque origin, so it cannot read the
platform's cookies or storage, and its requests to the platform are cross-site (the platform's
SameSite cookies stay behind). `Referrer-Policy: no-referrer` keeps the token out of other sites'
logs. A sample's files are served inline with their content type and `nosniff`, never as a
download of the SKU's artifact, which is not among them.

A sandbox is a partner's untrusted HTTP server answering on the platform's origin, so what passes
between it and the browser is allowlisted both ways (_FORWARDED, _RETURNED): the sandbox learns
nothing of the buyer a proxy in front adds, and sets nothing the browser applies to the whole
origin. What a session can hold of the web server's threads is limited: its request rate
(MARKETPLACE_PREVIEW_REQUEST_RATE), its requests served at once
(MARKETPLACE_PREVIEW_CONCURRENT_REQUESTS, a sample's file stream included), and each exchange
with its sandbox, by a wall-clock deadline (MARKETPLACE_PREVIEW_PROXY_SECONDS) and a shorter
wait for any one step of it (MARKETPLACE_PREVIEW_PROXY_WAIT_SECONDS).
"""

from __future__ import annotations

import html
import http.client
import logging
import re
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any, BinaryIO, TypeVar
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

from botocore.exceptions import BotoCoreError, ClientError
from csp.decorators import csp_exempt
from django.conf import settings
from django.core.cache import cache
from django.core.files.storage import default_storage
from django.db.models import F
from django.http import (
    BadHeaderError,
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    HttpResponseRedirect,
    StreamingHttpResponse,
)
from django.views.decorators.csrf import csrf_exempt

from marketplace import ratelimit
from marketplace.api.problems import error_response, problem_response
from marketplace.exceptions import ApplicationError, ServiceUnavailable
from marketplace.ranges import RangeNotSatisfiable, requested_range
from previews.exceptions import PreviewNotFound, SandboxUnavailable
from previews.models import MaterialKind, PreviewFile, PreviewSession
from previews.selectors import preview_by_token

logger = logging.getLogger(__name__)
_R = TypeVar("_R", bound=HttpResponseBase)

PREVIEW_CSP = "; ".join(
    [
        "sandbox allow-scripts allow-forms allow-popups allow-modals allow-downloads",
        "default-src 'self' data: blob: 'unsafe-inline' 'unsafe-eval'",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'self'",
        "object-src 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": PREVIEW_CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "private, no-store",
}
SAMPLE_METHODS = "GET, HEAD, OPTIONS"
PROXY_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
REQUEST_BODY_MAX = 1024 * 1024
SANDBOX_HOST = "preview"
_CHUNK = 64 * 1024
# The request headers a sandbox gets, besides `Host: preview`, `X-Forwarded-Prefix` and the
# Content-Length http.client sets: what a page needs to be served (content negotiation,
# conditional and range requests, a form's type). Nothing that says who or where the buyer is
# (the address in any spelling a proxy in front adds: X-Forwarded-*, Forwarded, Via,
# True-Client-IP, CF-Connecting-IP, …), nor the platform's Cookie or Authorization, nor
# User-Agent, which fingerprints the buyer (a page's script can still read navigator.userAgent,
# but the sandbox does not get it from every request, unasked).
_FORWARDED = frozenset(
    {
        "accept",
        "accept-encoding",
        "accept-language",
        "cache-control",
        "content-type",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "range",
    }
)
# The response headers passed on to the browser: what describes the body. Anything else a
# sandbox sends is dropped, as it would act for the platform's whole origin (NEL and Report-To
# report the buyer's later URLs, download tokens included, to the partner; Clear-Site-Data wipes
# the platform's cookies; Refresh redirects anywhere; Set-Cookie, Alt-Svc, Link, WWW-Authenticate,
# Access-Control-*, …) or is the platform's to set (SECURITY_HEADERS). `Location` (put under the
# preview's prefix, or dropped: _location), `Content-Disposition` (inline only) and
# `Content-Length` (http.client's reading of the framing) are handled on their own.
_RETURNED = frozenset(
    {
        "accept-ranges",
        "allow",
        "content-encoding",
        "content-language",
        "content-range",
        "content-type",
        "etag",
        "last-modified",
        "retry-after",
        "vary",
    }
)
# RFC 9112 §5.2 obsolete line folding, replaced by a space as a proxy must.
_OBS_FOLD = re.compile(r"\r?\n[ \t]+")


class PreviewsBusy(ServiceUnavailable):
    """This web process already serves MARKETPLACE_PREVIEW_PROCESS_REQUESTS preview requests."""

    code = "previews-busy"
    title = "Previews are busy"

    def default_retry_after(self) -> int:
        return 1


class PreviewBusy(ApplicationError):
    """A session already has MARKETPLACE_PREVIEW_CONCURRENT_REQUESTS requests being served."""

    code = "preview-busy"
    title = "The preview is answering as many requests as it may at once"
    status = 429

    def __init__(self, detail: str) -> None:
        super().__init__(detail, extra={"retry_after": 1})


class SandboxTimeout(ApplicationError):
    code = "sandbox-timeout"
    title = "The preview's sandbox did not answer in time"
    status = 504


class PreviewStreamCut(Exception):
    """A sandbox's answer stopped before its end: its deadline passed, or the sandbox failed or
    closed the connection early. Raised out of the response's stream, after part of the body was
    sent, so that the web server closes the connection without ending the response's framing and
    the browser knows the body is incomplete (a stream that just stopped would end a chunked
    body cleanly, or leave a Content-Length unmet on a connection kept alive)."""


def _secured(response: _R) -> _R:
    for name, value in SECURITY_HEADERS.items():
        response[name] = value
    return response


def _refused(request: HttpRequest, exc: ApplicationError) -> HttpResponse:
    return _secured(error_response(request, exc))


def _count(session_id: Any, served: int) -> None:
    PreviewSession.objects.filter(pk=session_id).update(
        requests_served=F("requests_served") + 1, bytes_served=F("bytes_served") + served
    )


@csp_exempt()
def preview_root(request: HttpRequest, token: str) -> HttpResponse:
    """`/previews/{token}` → `/previews/{token}/`: relative links inside resolve below it."""
    query = request.META.get("QUERY_STRING", "")
    return _secured(HttpResponseRedirect(f"{quote(token)}/" + (f"?{query}" if query else "")))


# The token is the credential and no cookie is read: there is nothing for CSRF to guard.
@csrf_exempt
@csp_exempt()
def preview_serve(request: HttpRequest, token: str, path: str = "") -> HttpResponseBase:
    try:
        session = preview_by_token(token)
        # Per session, not per address: buyers behind one address do not share it, and a
        # session is what holds a sandbox. A read: it goes on while the counters are down.
        ratelimit.hit_at(
            "preview",
            str(session.pk),
            ratelimit.parse_rate(settings.PREVIEW_REQUEST_RATE),
            write=False,
        )
    except ApplicationError as exc:
        return _refused(request, exc)
    if session.kind == MaterialKind.SANDBOX:
        return _proxy(request, session, token, path)
    return _sample(request, session, path)


# --- Requests served at once, per session ------------------------------------------------------


class _Slot:
    """One of a session's MARKETPLACE_PREVIEW_CONCURRENT_REQUESTS slots, held from the view until
    its answer has been sent (the stream's close).

    Each slot is a cache key of its own with an expiry, taken with `add` (atomic: SET NX on Redis,
    under the cache's lock in local memory, where the limit then holds per process), rather than
    one counter with incr and decr: a request that dies without giving its slot back (a killed
    process) holds it until that key expires, whereas a lost decrement would last as long as the
    session kept the counter alive. The expiry is twice the proxy's deadline, which bounds an
    exchange with a sandbox; a sample's stream, which has no deadline, renews it as it goes."""

    def __init__(self, key: str | None, owner: str) -> None:
        self.key = key  # None: taken while the cache was unreachable, so not counted
        self.owner = owner  # also this web process's slot (_PROCESS_SLOTS)
        self.renewed_at = time.monotonic()
        self.released = False

    @staticmethod
    def seconds() -> int:
        return max(1, round(2 * settings.PREVIEW_PROXY_SECONDS))

    @classmethod
    def take(cls, session_id: Any) -> _Slot | None:
        """A free slot of the session, or None when every one is taken. With the cache
        unreachable (django-redis then answers None) the request goes on uncounted, as the rate
        limits' reads do: the deadline still bounds it."""
        owner = secrets.token_hex(8)
        if not _PROCESS_SLOTS.acquire(owner):
            raise PreviewsBusy(
                "The platform is answering as many previews as it may at once; retry shortly."
            )
        for index in range(settings.PREVIEW_CONCURRENT_REQUESTS):
            key = f"preview-slot:{session_id}:{index}"
            taken = cache.add(key, owner, timeout=cls.seconds())
            if taken is None:
                return cls(None, owner)
            if taken:
                return cls(key, owner)
        _PROCESS_SLOTS.release(owner)
        return None

    def renew(self) -> None:
        if time.monotonic() - self.renewed_at > self.seconds() / 3:
            self.renewed_at = time.monotonic()
            _PROCESS_SLOTS.renew(self.owner)
            if self.key is not None:
                cache.touch(self.key, self.seconds())

    def release(self) -> None:
        # Only if still this request's: past its expiry another request may hold the key.
        if not self.released:
            self.released = True
            _PROCESS_SLOTS.release(self.owner)
            if self.key is not None and cache.get(self.key) == self.owner:
                cache.delete(self.key)


class _ProcessSlots:
    """Preview requests this web process serves at once (MARKETPLACE_PREVIEW_PROCESS_REQUESTS):
    however many sessions ask, the rest of its threads stay for the API, the admin and the
    webhooks. A slot not given back (a stream never closed) lapses after `_Slot.seconds()`, as
    the sessions' do."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, float] = {}

    def acquire(self, owner: str) -> bool:
        now = time.monotonic()
        with self._lock:
            self._held = {key: until for key, until in self._held.items() if until > now}
            if len(self._held) >= settings.PREVIEW_PROCESS_REQUESTS:
                return False
            self._held[owner] = now + _Slot.seconds()
            return True

    def renew(self, owner: str) -> None:
        with self._lock:
            if owner in self._held:
                self._held[owner] = time.monotonic() + _Slot.seconds()

    def release(self, owner: str) -> None:
        with self._lock:
            self._held.pop(owner, None)


_PROCESS_SLOTS = _ProcessSlots()


def _busy(request: HttpRequest) -> HttpResponse:
    limit = settings.PREVIEW_CONCURRENT_REQUESTS
    return _refused(
        request,
        PreviewBusy(
            f"The preview is already answering {limit} requests at once; retry when one has "
            "finished."
        ),
    )


# --- Samples -----------------------------------------------------------------------------------


def _sample(request: HttpRequest, session: PreviewSession, path: str) -> HttpResponseBase:
    if request.method == "OPTIONS":
        return _secured(HttpResponse(headers={"Allow": SAMPLE_METHODS, "Content-Length": "0"}))
    if request.method not in ("GET", "HEAD"):
        return _secured(
            problem_response(
                request,
                status=405,
                detail=f"A sample answers {SAMPLE_METHODS}.",
                headers={"Allow": SAMPLE_METHODS},
            )
        )
    material = session.material
    if not path and "/" in material.entry:
        # Served at the root, a nested entry's relative links would resolve beside the root.
        return _secured(HttpResponseRedirect(quote(material.entry)))
    path = path or material.entry
    if not path:
        return _listing(session)
    item = PreviewFile.objects.filter(material=material, path=path).first()
    if item is None:
        return _refused(request, PreviewNotFound(f"The preview has no file {path}."))
    etag = f'"{item.sha256}"'
    name = item.path.rsplit("/", 1)[-1]
    headers = {
        "Accept-Ranges": "bytes",
        "ETag": etag,
        "Content-Type": item.content_type,
        "Content-Disposition": f"inline; filename*=UTF-8''{quote(name)}",
    }
    if request.headers.get("If-None-Match") == etag:
        return _secured(HttpResponse(status=304, headers={"ETag": etag}))
    if request.method == "HEAD":
        return _secured(HttpResponse(headers={**headers, "Content-Length": str(item.size)}))
    try:
        wanted = requested_range(request, etag=etag, size=item.size)
    except RangeNotSatisfiable:
        return _secured(
            problem_response(
                request,
                status=416,
                code="range-not-satisfiable",
                title="The range is not within the file",
                detail=f"{name} is {item.size} bytes; ask for a range that starts before its end.",
                headers={"Content-Range": f"bytes */{item.size}", "ETag": etag},
            )
        )
    # A stream to a client that reads slowly holds a thread as long as one to a sandbox does.
    try:
        slot = _Slot.take(session.pk)
    except PreviewsBusy as exc:
        return _refused(request, exc)
    if slot is None:
        return _busy(request)
    try:
        stored = default_storage.open(item.storage_key, "rb")
    except (OSError, BotoCoreError, ClientError):
        slot.release()
        return _refused(
            request, SandboxUnavailable("The preview's file cannot be read right now; try again.")
        )
    first, last = wanted or (0, item.size - 1)
    if wanted is not None:
        headers["Content-Range"] = f"bytes {first}-{last}/{item.size}"
    length = last - first + 1
    response = StreamingHttpResponse(
        _FileStream(stored, session_id=session.pk, first=first, length=length, slot=slot),
        status=206 if wanted else 200,
        headers=headers,
    )
    response["Content-Length"] = str(length)
    return _secured(response)


class _FileStream:
    """Bytes `first` to `first + length - 1` of a stored file; counted on the session, and the
    session's slot given back, when the transfer ends."""

    def __init__(
        self, stored: BinaryIO, *, session_id: Any, first: int, length: int, slot: _Slot
    ) -> None:
        self._stored = stored
        self._session_id = session_id
        self._first = first
        self._left = length
        self._slot = slot
        self._served = 0
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        self._stored.seek(self._first)
        while self._left > 0:
            chunk = self._stored.read(min(_CHUNK, self._left))
            if not chunk:
                return
            self._left -= len(chunk)
            self._served += len(chunk)
            self._slot.renew()
            yield chunk

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._slot.release()
            self._stored.close()
            _count(self._session_id, self._served)


def _listing(session: PreviewSession) -> HttpResponse:
    paths = PreviewFile.objects.filter(material=session.material).values_list("path", flat=True)
    items = "".join(
        f'<li><a href="{html.escape(quote(path))}">{html.escape(path)}</a></li>' for path in paths
    )
    title = html.escape(f"Preview of {session.sku.title}")
    body = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head>"
        f"<body><h1>{title}</h1><ul>{items}</ul></body></html>"
    )
    _count(session.pk, len(body))
    return _secured(HttpResponse(body, content_type="text/html; charset=utf-8"))


# --- Sandboxes ---------------------------------------------------------------------------------


class _Deadline:
    """The wall clock of one exchange with a sandbox: at most `total` seconds from connecting to
    the body's last byte, and at most `wait` seconds for any one step of it."""

    def __init__(self, *, total: float, wait: float) -> None:
        self.ends = time.monotonic() + total
        self.wait = wait

    def timeout(self) -> float:
        left = self.ends - time.monotonic()
        if left <= 0:
            raise TimeoutError("the exchange's deadline passed")
        return min(left, self.wait)


class _DeadlineSocket(socket.socket):
    """A socket whose every read and write waits at most what is left of the exchange's
    deadline: a socket's own timeout counts per call, so a sandbox sending a byte just inside it
    (of its headers or of its body) would hold the thread for as long as it liked."""

    deadline: _Deadline

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        self.settimeout(self.deadline.timeout())
        return super().recv_into(buffer, nbytes, flags)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        self.settimeout(self.deadline.timeout())
        return super().recv(bufsize, flags)

    def sendall(self, data: Any, flags: int = 0) -> None:
        self.settimeout(self.deadline.timeout())  # sendall's timeout counts for the whole
        super().sendall(data, flags)


class _SandboxConnection(http.client.HTTPConnection):
    """To a sandbox's endpoint: `unix:<path>` (local provisioner) or `http://host:port`
    (Kubernetes), on a _DeadlineSocket."""

    def __init__(self, endpoint: str, deadline: _Deadline) -> None:
        self._socket_path = endpoint[len("unix:") :] if endpoint.startswith("unix:") else None
        if self._socket_path is not None:
            super().__init__(SANDBOX_HOST)
        else:
            parts = urlsplit(endpoint)
            super().__init__(parts.hostname or "", parts.port or 80)
        self._deadline = deadline

    def connect(self) -> None:
        timeout = self._deadline.timeout()
        if self._socket_path is not None:
            plain = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            plain.settimeout(timeout)
            try:
                plain.connect(self._socket_path)
            except OSError:
                plain.close()
                raise
        else:
            plain = socket.create_connection((self.host, self.port), timeout)
        sock = _DeadlineSocket(fileno=plain.detach())
        sock.deadline = self._deadline
        self.sock = sock


def _forwarded_headers(request: HttpRequest, prefix: str) -> dict[str, str]:
    headers = {name: value for name, value in request.headers.items() if name.lower() in _FORWARDED}
    headers["Host"] = SANDBOX_HOST
    headers["X-Forwarded-Prefix"] = prefix
    return headers


def _proxy(
    request: HttpRequest, session: PreviewSession, token: str, path: str
) -> HttpResponseBase:
    if request.method not in PROXY_METHODS:
        return _secured(
            problem_response(
                request,
                status=405,
                detail=f"A preview answers {', '.join(sorted(PROXY_METHODS))}.",
                headers={"Allow": ", ".join(sorted(PROXY_METHODS))},
            )
        )
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = -1
    if length < 0:
        return _secured(
            problem_response(request, status=400, detail="Content-Length is not a number of bytes.")
        )
    if request.META.get("HTTP_TRANSFER_ENCODING"):
        # Django reads a request body by its Content-Length only: a chunked body would reach
        # the sandbox empty. Said, rather than passed on wrong.
        return _secured(
            problem_response(
                request,
                status=411,
                detail="Send a preview's request body with a Content-Length, not chunked.",
            )
        )
    if length > REQUEST_BODY_MAX:
        return _secured(
            problem_response(
                request,
                status=413,
                code="payload-too-large",
                detail=f"A preview takes request bodies of at most {REQUEST_BODY_MAX} bytes.",
            )
        )
    # Taken before the body is read: a client sending it slowly holds a thread too.
    try:
        slot = _Slot.take(session.pk)
    except PreviewsBusy as exc:
        return _refused(request, exc)
    if slot is None:
        return _busy(request)
    try:
        response = _exchange(request, session, token, path, body_length=length, slot=slot)
    except BaseException:
        slot.release()
        raise
    if not response.streaming:
        slot.release()
    return _secured(response)


def _exchange(
    request: HttpRequest,
    session: PreviewSession,
    token: str,
    path: str,
    *,
    body_length: int,
    slot: _Slot,
) -> HttpResponseBase:
    """One request to the sandbox; a streaming answer owns `slot` (and gives it back when it is
    closed), any other leaves it to the caller."""
    body = request.read(REQUEST_BODY_MAX + 1) if body_length else b""
    prefix = f"/previews/{token}"
    target = "/" + quote(path, safe="/%:@!$&'()*+,;=-._~")
    if query := request.META.get("QUERY_STRING", ""):
        target += f"?{query}"
    deadline = _Deadline(
        total=settings.PREVIEW_PROXY_SECONDS, wait=settings.PREVIEW_PROXY_WAIT_SECONDS
    )
    connection = _SandboxConnection(session.endpoint, deadline)
    try:
        connection.request(
            request.method or "GET",
            target,
            body=body or None,
            headers=_forwarded_headers(request, prefix),
        )
        upstream = connection.getresponse()
    except TimeoutError:
        connection.close()
        logger.warning("preview %s: its sandbox did not answer in time", session.pk)
        return error_response(
            request, SandboxTimeout("The preview's sandbox did not answer in time; try again.")
        )
    except (OSError, http.client.HTTPException, ValueError):
        # ValueError: a header value http.client will not send (a CR or LF in it).
        connection.close()
        return _unavailable(request)
    if not 200 <= upstream.status <= 599:
        # An interim answer (other than 100, which http.client skips) has no place here, and
        # Django refuses a status above 599: neither is an answer the browser can use.
        upstream.close()
        connection.close()
        return _unavailable(request)
    # The status's own reason phrase, never the sandbox's (a bare CR in it would reach the
    # status line).
    response: HttpResponseBase
    if upstream.length == 0 and not upstream.chunked:
        # Nothing to stream (a redirect, a HEAD, a 204 or 304): answered at once, and the slot
        # given back.
        upstream.close()
        connection.close()
        _count(session.pk, 0)
        response = HttpResponse(status=upstream.status)
    else:
        stream = _UpstreamStream(upstream, connection, session_id=session.pk, slot=slot)
        response = StreamingHttpResponse(stream, status=upstream.status)
    for name, value in upstream.getheaders():
        _return_header(response, name, value, target=target, prefix=prefix)
    length = _content_length(upstream, request.method or "GET")
    if length is not None and upstream.status not in (204, 304):
        response["Content-Length"] = length
    if "Content-Type" not in response:
        response["Content-Type"] = "application/octet-stream"
    return response


def _unavailable(request: HttpRequest) -> HttpResponse:
    return error_response(
        request, SandboxUnavailable("The preview's sandbox did not answer; try again.")
    )


def _return_header(
    response: HttpResponseBase, name: str, value: str, *, target: str, prefix: str
) -> None:
    """Sets one of the sandbox's response headers on the answer if it is allowed through, and
    drops it if it cannot be set as sent (never a 500 for the sandbox's bad header)."""
    lowered = name.lower()
    value = _OBS_FOLD.sub(" ", value)
    if lowered == "location":
        value = _location(value, target=target, prefix=prefix)
    elif lowered == "content-disposition":
        # Inline only: an attachment would be a download that seems to come from the platform.
        value = value if value.split(";", 1)[0].strip().lower() == "inline" else None
    elif lowered not in _RETURNED:
        value = None
    if value is None:
        return
    try:
        response[name] = value
    except (BadHeaderError, UnicodeError, ValueError):
        logger.info("a preview's sandbox sent a header that cannot be passed on: %r", name)


def _content_length(upstream: http.client.HTTPResponse, method: str) -> str | None:
    """The body's length as http.client reads the framing (chunked wins over a Content-Length
    sent with it, so the sandbox's own header is not passed on: it could frame the answer
    otherwise than the bytes that follow); a HEAD's is the header's, when it is a number."""
    if method == "HEAD":
        sent = (upstream.getheader("Content-Length") or "").strip()
        return sent if sent.isdigit() else None
    if upstream.chunked or upstream.length is None:
        return None
    return str(upstream.length)


# Anything a browser would read as other than an ASCII URL reference: controls and spaces (it
# strips or drops them: "\t//evil" is "//evil"), a backslash (read as "/": "/\\evil" is
# "//evil"), and non-ASCII.
_LOCATION_UNSAFE = re.compile(r"[^\x21-\x7e]|\\")
_DOT = re.compile(r"%2e", re.IGNORECASE)


def _location(value: str, *, target: str, prefix: str) -> str | None:
    """A sandbox's redirect as the browser is to follow it: a reference within the sandbox (a
    path, `/next`, `next`, `../next`, or a URL on the Host it was sent, `http://preview/next`),
    resolved as the browser would against the URL it asked for and put under the preview's prefix
    (left as it is when already under it: a server honouring X-Forwarded-Prefix). Anything else
    (another site, `//host`, another scheme) is None: dropped, the status kept, as the platform's
    origin must not redirect the buyer to wherever a partner says."""
    if _LOCATION_UNSAFE.search(value):
        return None
    parts = urlsplit(value)
    if (parts.scheme or parts.netloc) and (
        parts.scheme.lower() not in ("http", "https") or parts.netloc.lower() != SANDBOX_HOST
    ):
        return None
    # Browsers take %2e as a dot in a path segment; decoded, dot segments are resolved here and
    # cannot climb out of the prefix there.
    reference = urlunsplit(("", "", _DOT.sub(".", parts.path), parts.query, parts.fragment))
    base = f"http://{SANDBOX_HOST}{target.split('?', 1)[0]}"
    resolved = urlsplit(urljoin(base, reference or base))
    path = "/" + resolved.path.lstrip("/")
    if not (path == prefix or path.startswith(f"{prefix}/")):
        path = prefix + path
    return urlunsplit(("", "", path, resolved.query, resolved.fragment))


class _UpstreamStream:
    """The sandbox's body, as it comes, within the exchange's deadline; counted on the session,
    and the session's slot given back, when it is closed."""

    def __init__(
        self,
        upstream: http.client.HTTPResponse,
        connection: http.client.HTTPConnection,
        *,
        session_id: Any,
        slot: _Slot,
    ) -> None:
        self._upstream = upstream
        self._connection = connection
        self._session_id = session_id
        self._slot = slot
        self._served = 0
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        try:
            while chunk := self._upstream.read1(_CHUNK):
                self._served += len(chunk)
                yield chunk
        except TimeoutError:
            logger.warning(
                "preview %s: its sandbox's answer was cut off, out of time, after %d bytes",
                self._session_id,
                self._served,
            )
            raise PreviewStreamCut("the sandbox's answer ran out of time") from None
        except (OSError, http.client.HTTPException):
            raise PreviewStreamCut("the sandbox's answer broke off") from None
        if self._upstream.length:  # bytes of a Content-Length that never came
            raise PreviewStreamCut("the sandbox's answer ended before its length")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._slot.release()
            self._upstream.close()
            self._connection.close()
            _count(self._session_id, self._served)
