"""`/previews/{token}/…`: a sample's files, or the session's sandbox behind a proxy.

The token is the credential (as a download link is); no cookie or Authorization header of the
platform is read, and none is passed to a sandbox. Every answer carries a Content-Security-Policy
with `sandbox` (no `allow-same-origin`): the page runs in an opaque origin, so it cannot read the
platform's cookies or storage, and its requests to the platform are cross-site (the platform's
SameSite cookies stay behind). `Referrer-Policy: no-referrer` keeps the token out of other sites'
logs. A sample's files are served inline with their content type and `nosniff`, never as a
download of the SKU's artifact, which is not among them.
"""

from __future__ import annotations

import contextlib
import html
import http.client
import socket
from collections.abc import Iterator
from typing import Any, BinaryIO
from urllib.parse import quote, urlsplit

from botocore.exceptions import BotoCoreError, ClientError
from csp.decorators import csp_exempt
from django.core.files.storage import default_storage
from django.db.models import F
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from marketplace.api.problems import error_response, problem_response
from marketplace.exceptions import ApplicationError
from marketplace.ranges import RangeNotSatisfiable, requested_range
from previews.exceptions import PreviewNotFound, SandboxUnavailable
from previews.models import MaterialKind, PreviewFile, PreviewSession
from previews.selectors import preview_by_token

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
PROXY_TIMEOUT_SECONDS = 30
_CHUNK = 64 * 1024
# RFC 9110 §7.6.1 hop-by-hop fields, and what the platform sets or withholds itself.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# The client's address is withheld in every spelling a proxy in front may add it (the
# X-Forwarded-* family is dropped by prefix below).
_NOT_FORWARDED = _HOP_BY_HOP | {
    "cookie",
    "authorization",
    "host",
    "content-length",
    "forwarded",
    "x-real-ip",
}
_NOT_RETURNED = _HOP_BY_HOP | {
    "set-cookie",
    "content-security-policy",
    "content-security-policy-report-only",
    "strict-transport-security",
    "x-frame-options",
    "cross-origin-resource-policy",
    "referrer-policy",
    "x-content-type-options",
    "cache-control",
    "server",
    "date",
}


def _secured(response: HttpResponse) -> HttpResponse:
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
def preview_serve(request: HttpRequest, token: str, path: str = "") -> HttpResponse:
    try:
        session = preview_by_token(token)
    except ApplicationError as exc:
        return _refused(request, exc)
    if session.kind == MaterialKind.SANDBOX:
        return _proxy(request, session, token, path)
    return _sample(request, session, path)


# --- Samples -----------------------------------------------------------------------------------


def _sample(request: HttpRequest, session: PreviewSession, path: str) -> HttpResponse:
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
    try:
        stored = default_storage.open(item.storage_key, "rb")
    except (OSError, BotoCoreError, ClientError):
        return _refused(
            request, SandboxUnavailable("The preview's file cannot be read right now; try again.")
        )
    first, last = wanted or (0, item.size - 1)
    if wanted is not None:
        headers["Content-Range"] = f"bytes {first}-{last}/{item.size}"
    length = last - first + 1
    response = StreamingHttpResponse(
        _FileStream(stored, session_id=session.pk, first=first, length=length),
        status=206 if wanted else 200,
        headers=headers,
    )
    response["Content-Length"] = str(length)
    return _secured(response)


class _FileStream:
    """Bytes `first` to `first + length - 1` of a stored file; counted on the session when the
    transfer ends."""

    def __init__(self, stored: BinaryIO, *, session_id: Any, first: int, length: int) -> None:
        self._stored = stored
        self._session_id = session_id
        self._first = first
        self._left = length
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
            yield chunk

    def close(self) -> None:
        if not self._closed:
            self._closed = True
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


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: str, *, timeout: float) -> None:
        super().__init__("preview", timeout=timeout)
        self._socket_path = socket_path

    def connect(self) -> None:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(self.timeout)
        try:
            conn.connect(self._socket_path)
        except OSError:
            conn.close()
            raise
        self.sock = conn


def _connection(endpoint: str) -> http.client.HTTPConnection:
    if endpoint.startswith("unix:"):
        return _UnixConnection(endpoint[len("unix:") :], timeout=PROXY_TIMEOUT_SECONDS)
    parts = urlsplit(endpoint)
    return http.client.HTTPConnection(
        parts.hostname or "", parts.port or 80, timeout=PROXY_TIMEOUT_SECONDS
    )


def _forwarded_headers(request: HttpRequest, prefix: str) -> dict[str, str]:
    headers = {
        name: value
        for name, value in request.headers.items()
        if name.lower() not in _NOT_FORWARDED and not name.lower().startswith("x-forwarded-")
    }
    headers["Host"] = "preview"
    headers["X-Forwarded-Prefix"] = prefix
    return headers


def _proxy(request: HttpRequest, session: PreviewSession, token: str, path: str) -> HttpResponse:
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
    body = request.read(REQUEST_BODY_MAX + 1) if length else b""
    prefix = f"/previews/{token}"
    target = "/" + quote(path, safe="/%:@!$&'()*+,;=-._~")
    if query := request.META.get("QUERY_STRING", ""):
        target += f"?{query}"
    connection = _connection(session.endpoint)
    try:
        connection.request(
            request.method or "GET", target, body=body, headers=_forwarded_headers(request, prefix)
        )
        upstream = connection.getresponse()
    except (OSError, http.client.HTTPException, ValueError):
        # ValueError: a header value http.client will not send (a CR or LF in it).
        connection.close()
        return _refused(
            request, SandboxUnavailable("The preview's sandbox did not answer; try again.")
        )
    response = StreamingHttpResponse(
        _UpstreamStream(upstream, connection, session_id=session.pk),
        status=upstream.status,
        reason=upstream.reason,
    )
    for name, value in upstream.getheaders():
        lowered = name.lower()
        if lowered in _NOT_RETURNED:
            continue
        if lowered == "location":
            value = _location(value, prefix)
        response[name] = value
    if "Content-Type" not in response:
        response["Content-Type"] = "application/octet-stream"
    return _secured(response)


def _location(value: str, prefix: str) -> str:
    """A sandbox's redirect kept below the preview's prefix: a path (`/next`) or a URL on the
    Host it was sent (`http://preview/next`) is put under it; one already under it (a server
    honouring X-Forwarded-Prefix) is left as it is, as is another site's address."""
    for origin in ("http://preview/", "https://preview/"):
        if value.startswith(origin):
            value = value[len(origin) - 1 :]
    if not value.startswith("/") or value.startswith("//"):
        return value
    if value == prefix or value.startswith((f"{prefix}/", f"{prefix}?")):
        return value
    return prefix + value


class _UpstreamStream:
    def __init__(
        self,
        upstream: http.client.HTTPResponse,
        connection: http.client.HTTPConnection,
        *,
        session_id: Any,
    ) -> None:
        self._upstream = upstream
        self._connection = connection
        self._session_id = session_id
        self._served = 0
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        with contextlib.suppress(OSError, http.client.HTTPException):
            while chunk := self._upstream.read1(_CHUNK):
                self._served += len(chunk)
                yield chunk

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._upstream.close()
            self._connection.close()
            _count(self._session_id, self._served)
