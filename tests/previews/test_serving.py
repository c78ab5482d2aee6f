"""/previews/{token}/…: a sample's files from storage, or a proxy to the session's sandbox."""

import hashlib
import io
import json
import textwrap
import threading
import time
import zipfile
from typing import Any

import pytest
from django.core.files.storage import default_storage
from django.db import connections
from django.test import Client

from catalog.models import Sku
from marketplace.models import User
from previews.models import EndReason, MaterialKind, PreviewFile, PreviewSession, SessionStatus
from previews.provisioners.local import LocalProvisioner
from previews.sandbox import available
from previews.selectors import token_hash
from previews.services import (
    Upload,
    preview_end,
    preview_expire,
    preview_open,
    preview_revoke,
    preview_teardown,
    previews_sweep,
    sku_preview_set,
)
from previews.serving import PREVIEW_CSP, REQUEST_BODY_MAX, PreviewStreamCut
from tests.catalog.factories import TEST_ACTOR, make_publisher, publish_sku
from tests.previews.factories import INDEX, add_material, previewable_sku
from tests.support.worker import wait_until

SANDBOX_UNAVAILABLE = available()
needs_sandbox = pytest.mark.skipif(
    SANDBOX_UNAVAILABLE is not None, reason=SANDBOX_UNAVAILABLE or ""
)
NOTES = b"0123456789" * 100


def body_of(response: Any) -> bytes:
    if response.streaming:
        return b"".join(response.streaming_content)
    return response.content


def assert_secured(response: Any) -> None:
    assert response["Content-Security-Policy"] == PREVIEW_CSP
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "no-referrer"
    assert response["Cache-Control"] == "private, no-store"


@pytest.fixture
def sample_sku(db: None) -> Sku:
    return previewable_sku(MaterialKind.SAMPLE)


@pytest.fixture
def token(sample_sku: Sku, buyer: User) -> str:
    return preview_open(buyer=buyer, sku_slug=sample_sku.slug).token


# --- A sample ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_entry_is_served_inline_with_its_type_and_the_preview_headers(client, token):
    page = client.get(f"/previews/{token}/")

    assert page.status_code == 200
    assert body_of(page) == INDEX
    assert page["Content-Type"] == "text/html; charset=utf-8"
    assert page["Content-Length"] == str(len(INDEX))
    assert page["Content-Disposition"] == "inline; filename*=UTF-8''index.html"
    assert page["Accept-Ranges"] == "bytes"
    assert page["ETag"] == f'"{hashlib.sha256(INDEX).hexdigest()}"'
    assert_secured(page)
    assert "sandbox" in page["Content-Security-Policy"].split(";")[0].split()
    assert "allow-same-origin" not in page["Content-Security-Policy"]
    assert "Set-Cookie" not in page
    session = PreviewSession.objects.get()
    assert (session.requests_served, session.bytes_served) == (1, len(INDEX))


@pytest.mark.django_db
def test_a_named_file_is_served_with_its_own_type(client, token):
    page = client.get(f"/previews/{token}/notes.txt")

    assert page.status_code == 200
    assert body_of(page) == NOTES
    assert page["Content-Type"] == "text/plain; charset=utf-8"
    assert_secured(page)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("range_header", "first", "last"),
    [("bytes=10-19", 10, 19), ("bytes=-5", 995, 999), ("bytes=990-", 990, 999)],
    ids=["first-last", "suffix", "open-ended"],
)
def test_a_range_is_answered_206_with_exactly_those_bytes(client, token, range_header, first, last):
    page = client.get(f"/previews/{token}/notes.txt", HTTP_RANGE=range_header)

    assert page.status_code == 206
    assert body_of(page) == NOTES[first : last + 1]
    assert page["Content-Range"] == f"bytes {first}-{last}/1000"
    assert page["Content-Length"] == str(last - first + 1)
    assert_secured(page)
    assert PreviewSession.objects.get().bytes_served == last - first + 1


@pytest.mark.django_db
def test_a_range_past_the_end_is_416(client, token):
    page = client.get(f"/previews/{token}/notes.txt", HTTP_RANGE="bytes=1000-")

    assert page.status_code == 416
    assert page["Content-Range"] == "bytes */1000"
    assert page.json()["code"] == "range-not-satisfiable"
    assert_secured(page)


@pytest.mark.django_db
def test_a_matching_etag_is_304_and_head_sends_no_body(client, token):
    etag = f'"{hashlib.sha256(NOTES).hexdigest()}"'

    unchanged = client.get(f"/previews/{token}/notes.txt", HTTP_IF_NONE_MATCH=etag)
    head = client.head(f"/previews/{token}/notes.txt")

    assert unchanged.status_code == 304
    assert body_of(unchanged) == b""
    assert unchanged["ETag"] == etag
    assert_secured(unchanged)
    assert head.status_code == 200
    assert body_of(head) == b""
    assert head["Content-Length"] == "1000"
    assert head["Content-Type"] == "text/plain; charset=utf-8"
    assert_secured(head)


@pytest.mark.django_db
@pytest.mark.parametrize("method", ["post", "put", "delete"])
def test_a_sample_refuses_writes_405(client, token, method):
    page = getattr(client, method)(
        f"/previews/{token}/notes.txt", data=b"x", content_type="text/plain"
    )

    assert page.status_code == 405
    assert page["Allow"] == "GET, HEAD, OPTIONS"
    assert_secured(page)


@pytest.mark.django_db
def test_a_file_not_in_the_material_is_404(client, token):
    page = client.get(f"/previews/{token}/missing.html")

    assert page.status_code == 404
    assert page.json()["code"] == "preview-not-found"
    assert_secured(page)


@pytest.mark.django_db
def test_the_token_without_a_slash_redirects_below_it(client, token):
    page = client.get(f"/previews/{token}?a=1")

    assert page.status_code == 302
    assert page["Location"] == f"{token}/?a=1"  # relative: /previews/{token}/?a=1
    assert_secured(page)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "bad",
    ["short", "A" * 42, "A" * 44, "A" * 42 + ".", "A" * 42 + "%2B", "A" * 42 + "~"],
    ids=["short", "42", "44", "dot", "plus", "tilde"],
)
def test_a_malformed_token_is_404(client, token, bad):
    page = client.get(f"/previews/{bad}/")

    assert page.status_code == 404
    assert page.json()["code"] == "preview-not-found"
    assert_secured(page)


@pytest.mark.django_db
def test_an_unknown_well_formed_token_is_404(client, token):
    other = ("B" if token[0] != "B" else "C") + token[1:]

    page = client.get(f"/previews/{other}/")

    assert page.status_code == 404
    assert page.json()["detail"] == "There is no such preview."


@pytest.mark.django_db
def test_an_ended_preview_is_410_ended(client, buyer, sample_sku):
    opened = preview_open(buyer=buyer, sku_slug=sample_sku.slug)
    preview_end(session_id=opened.session.pk, reason=EndReason.ENDED, actor=TEST_ACTOR)

    page = client.get(f"/previews/{opened.token}/notes.txt")

    assert page.status_code == 410
    assert page.json()["code"] == "preview-gone"
    assert page.json()["reason"] == "ended"
    assert page.json()["detail"] == "The preview was ended."
    assert_secured(page)


@pytest.mark.django_db
def test_a_revoked_preview_is_410_revoked(client, buyer, sample_sku):
    opened = preview_open(buyer=buyer, sku_slug=sample_sku.slug)
    preview_revoke(session_id=opened.session.pk, reason="abuse report", actor=TEST_ACTOR)

    page = client.get(f"/previews/{opened.token}/")

    assert page.status_code == 410
    assert page.json()["reason"] == "revoked"
    assert page.json()["detail"] == "The preview was revoked."


@pytest.mark.django_db
def test_an_expired_preview_is_410_expired_before_and_after_it_is_ended(
    client, buyer, sample_sku, settings
):
    settings.PREVIEW_MAX_TTL_SECONDS = 1
    opened = preview_open(buyer=buyer, sku_slug=sample_sku.slug)
    assert client.get(f"/previews/{opened.token}/").status_code == 200
    time.sleep(max((opened.session.expires_at.timestamp() - time.time()) + 0.05, 0))

    # Past its time, before the expiry task has run.
    late = client.get(f"/previews/{opened.token}/")
    assert PreviewSession.objects.get().status == SessionStatus.READY
    preview_expire(session_id=opened.session.pk)
    ended = client.get(f"/previews/{opened.token}/")

    assert (late.status_code, late.json()["reason"]) == (410, "expired")
    assert PreviewSession.objects.get().end_reason == "expired"
    assert (ended.status_code, ended.json()["reason"]) == (410, "expired")


@pytest.mark.django_db
def test_a_preview_still_starting_is_503_with_retry_after(client, buyer):
    sku = previewable_sku(MaterialKind.SANDBOX)
    opened = preview_open(buyer=buyer, sku_slug=sku.slug)  # no worker: it stays requested

    page = client.get(f"/previews/{opened.token}/")

    assert page.status_code == 503
    assert page.json()["code"] == "preview-starting"
    assert page["Retry-After"] == "1"
    assert_secured(page)


@pytest.mark.django_db
def test_without_an_entry_the_files_are_listed_with_their_names_escaped(client, buyer):
    evil = "<img src=x onerror=alert(1)>.txt"
    sku = publish_sku(make_publisher(), title="Tools & <Things>")
    add_material(
        sku,
        MaterialKind.SAMPLE,
        uploads=[Upload("notes.txt", io.BytesIO(NOTES)), Upload(evil, io.BytesIO(b"evil"))],
    )
    sku_preview_set(sku_id=sku.pk, enabled=True, actor=TEST_ACTOR)
    token = preview_open(buyer=buyer, sku_slug=sku.slug).token

    page = client.get(f"/previews/{token}/")

    assert page.status_code == 200
    assert page["Content-Type"] == "text/html; charset=utf-8"
    assert_secured(page)
    listing = body_of(page).decode()
    assert "<img" not in listing
    assert "<Things>" not in listing
    assert "<title>Preview of Tools &amp; &lt;Things&gt;</title>" in listing
    assert (
        '<li><a href="%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E.txt">'
        "&lt;img src=x onerror=alert(1)&gt;.txt</a></li>"
    ) in listing
    assert '<li><a href="notes.txt">notes.txt</a></li>' in listing
    # The link it gives opens that file.
    linked = client.get(f"/previews/{token}/%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E.txt")
    assert body_of(linked) == b"evil"


@pytest.mark.django_db
def test_an_entry_in_a_folder_is_opened_where_its_relative_links_resolve(client, buyer):
    page = b'<link rel="stylesheet" href="style.css"><a href="../caf%C3%A9.txt">'
    sku = publish_sku(make_publisher())
    site = {"site/index.html": page, "site/style.css": b"p{}", "caf\u00e9.txt": b"c"}
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as writer:
        for name, content in site.items():
            writer.writestr(name, content)
    archive.seek(0)
    add_material(
        sku, MaterialKind.SAMPLE, uploads=[Upload("site.zip", archive)], entry="site/index.html"
    )
    sku_preview_set(sku_id=sku.pk, enabled=True, actor=TEST_ACTOR)
    token = preview_open(buyer=buyer, sku_slug=sku.slug).token

    root = client.get(f"/previews/{token}/")

    assert root.status_code == 302
    assert root["Location"] == "site/index.html"  # relative: /previews/{token}/site/index.html
    assert_secured(root)
    assert body_of(client.get(f"/previews/{token}/site/index.html")) == page
    assert body_of(client.get(f"/previews/{token}/site/style.css")) == b"p{}"
    named = client.get(f"/previews/{token}/caf%C3%A9.txt")
    assert body_of(named) == b"c"
    assert named["Content-Disposition"] == "inline; filename*=UTF-8''caf%C3%A9.txt"


@pytest.mark.django_db
def test_the_skus_artifact_is_never_served(client, buyer):
    artifact = b"PK-the-artifact-" + bytes(range(256)) * 8
    sku = publish_sku(make_publisher(), content=artifact)
    add_material(sku, MaterialKind.SAMPLE)
    sku_preview_set(sku_id=sku.pk, enabled=True, actor=TEST_ACTOR)
    token = preview_open(buyer=buyer, sku_slug=sku.slug).token
    key = sku.artifact.storage_key
    assert default_storage.open(key).read() == artifact
    stored = set(PreviewFile.objects.values_list("storage_key", flat=True))
    assert key not in stored

    answers = [
        client.get(f"/previews/{token}/{path}")
        for path in [
            key,
            "package.zip",
            f"../../{key}",
            f"..%2F..%2F{key}",
            f"notes.txt/../../../{key}",
            *(f"../{k}" for k in stored),
            "/" + key,
        ]
    ]

    assert [answer.status_code for answer in answers] == [404] * len(answers)
    assert [a for a in answers if artifact in body_of(a)] == []


# --- A sandbox, behind the proxy ---------------------------------------------------------------

# Serves on the listening socket the sandbox inherits (PREVIEW_LISTEN_FD, as previews/demo_server.py
# does), a thread per connection: echoes what it was sent as JSON (with how many requests it has
# answered) and tries to set a cookie and its own CSP; /go?to=… redirects to `to`; /hostile
# sends headers that act on a whole origin; /raw/… writes an answer byte for byte; /trickle
# sends its body a byte at a time, /trickle-headers its headers; /silent never answers.
ECHO_SERVER = textwrap.dedent(
    """
    import hashlib
    import http.server
    import json
    import os
    import socket
    import socketserver
    import threading
    import time
    from urllib.parse import parse_qs, urlsplit

    answered = 0
    lock = threading.Lock()
    RAW = {
        "/raw/folded": (
            b"HTTP/1.0 200 OK\\rSet-Cookie: reason=1\\r\\n"
            b"Content-Type: text/plain\\r\\n"
            b"Content-Language: en,\\r\\n fr\\r\\n"
            b"X-Folded: a\\r\\n\\tb\\r\\n"
            b"X-Control: a\\x0bb\\x00c\\r\\n"
            b"Content-Length: 2\\r\\n\\r\\nok"
        ),
        "/raw/999": b"HTTP/1.0 999 Odd\\r\\nContent-Length: 0\\r\\n\\r\\n",
        "/raw/103": b"HTTP/1.0 103 Early Hints\\r\\nLink: </x>; rel=preload\\r\\n\\r\\n",
        "/raw/chunked-and-length": (
            b"HTTP/1.1 200 OK\\r\\nContent-Type: text/plain\\r\\n"
            b"Transfer-Encoding: chunked\\r\\nContent-Length: 1000\\r\\n"
            b"Connection: close\\r\\n\\r\\n"
            b"3\\r\\nabc\\r\\n2\\r\\nde\\r\\n0\\r\\n\\r\\n"
        ),
    }
    HOSTILE = [
        ("Content-Type", "text/html"),
        ("NEL", '{"report_to": "partner", "max_age": 31536000, "include_subdomains": true}'),
        ("Report-To", '{"group": "partner", "endpoints": [{"url": "https://partner.example/r"}]}'),
        ("Reporting-Endpoints", 'partner="https://partner.example/r"'),
        ("Clear-Site-Data", '"cookies", "storage"'),
        ("Refresh", "0; url=https://partner.example/"),
        ("Link", "<https://partner.example/x.js>; rel=preload; as=script"),
        ("Alt-Svc", 'h3=":443"; ma=86400'),
        ("WWW-Authenticate", 'Basic realm="Marketplace sign-in"'),
        ("Access-Control-Allow-Origin", "*"),
        ("Strict-Transport-Security", "max-age=0"),
        ("Set-Cookie", "sessionid=partner; Path=/"),
        ("Server", "partner/1.0"),
        ("X-Sandbox", "echo"),
        ("ETag", '"v1"'),
        ("Last-Modified", "Wed, 21 Oct 2015 07:28:00 GMT"),
        ("Vary", "Accept-Language"),
        ("Content-Language", "fr"),
        ("Accept-Ranges", "none"),
    ]


    class Handler(http.server.BaseHTTPRequestHandler):
        def address_string(self):
            return "preview-socket"

        def log_message(self, *args):
            pass

        def answer(self):
            global answered
            with lock:
                answered += 1
                count = answered
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            url = urlsplit(self.path)
            query = {name: values[0] for name, values in parse_qs(url.query).items()}
            if url.path == "/go":
                self.send_response(302)
                self.send_header("Location", query["to"])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if url.path == "/hostile":
                self.send_response(200)
                for name, value in HOSTILE:
                    self.send_header(name, value)
                self.send_header("Content-Disposition", query["disposition"])
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"hi")
                return
            if url.path in RAW:
                self.wfile.write(RAW[url.path])
                self.close_connection = True
                return
            if url.path == "/trickle":
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", "1000")
                self.end_headers()
                for _ in range(1000):
                    self.wfile.write(b"x")
                    time.sleep(0.1)
                return
            if url.path == "/trickle-headers":
                self.wfile.write(b"HTTP/1.0 200 OK\\r\\nX-Slow: ")
                for _ in range(1000):
                    self.wfile.write(b"a")
                    time.sleep(0.1)
                return
            if url.path == "/silent":
                self.rfile.read(1)  # until the platform gives up and closes the connection
                self.close_connection = True
                return
            payload = json.dumps(
                {
                    "answered": count,
                    "method": self.command,
                    "path": self.path,
                    "headers": [[name, value] for name, value in self.headers.items()],
                    "body_length": len(body),
                    "body_sha256": hashlib.sha256(body).hexdigest(),
                    "body_start": body[:100].decode("latin-1"),
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Set-Cookie", "sandbox=1; Path=/")
            self.send_header("Content-Security-Policy", "default-src *")
            self.send_header("X-Frame-Options", "ALLOWALL")
            self.send_header("X-Sandbox", "echo")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = answer


    class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True

        def handle_error(self, request, client_address):
            pass  # a connection the platform closed mid-answer (the trickles)


    # The socket the platform listens on, inherited (socket activation).
    server = Server("", Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = socket.socket(fileno=int(os.environ["PREVIEW_LISTEN_FD"]))
    server.serve_forever()
    """
)


@pytest.fixture
def echo_preview(transactional_db: None, celery_worker: Any, buyer: User) -> Any:
    """A ready sandbox session running ECHO_SERVER; ended and torn down after the test."""
    sku = publish_sku(make_publisher())
    add_material(
        sku,
        MaterialKind.SANDBOX,
        uploads=[
            Upload("index.html", io.BytesIO(INDEX)),
            Upload("server.py", io.BytesIO(ECHO_SERVER.encode())),
        ],
    )
    sku_preview_set(sku_id=sku.pk, enabled=True, actor=TEST_ACTOR)
    opened = preview_open(buyer=buyer, sku_slug=sku.slug)
    starting = (SessionStatus.REQUESTED, SessionStatus.STARTING)
    wait_until(
        lambda: PreviewSession.objects.get(pk=opened.session.pk).status not in starting,
        worker=celery_worker,
    )
    session = PreviewSession.objects.get(pk=opened.session.pk)
    assert session.status == SessionStatus.READY, (session.end_detail, celery_worker.log()[-3000:])
    yield opened
    preview_end(
        session_id=session.pk, reason=EndReason.REVOKED, detail="test over", actor=TEST_ACTOR
    )
    preview_teardown(session_id=session.pk)


def echoed(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, body_of(response)
    return json.loads(body_of(response))


@needs_sandbox
@pytest.mark.django_db(transaction=True)
def test_a_sandbox_gets_only_the_request_headers_a_page_needs(echo_preview):
    token = echo_preview.token
    client = Client()
    client.cookies["sessionid"] = "platform-session"
    client.cookies["csrftoken"] = "k" * 32  # well formed: a malformed one is replaced

    response = client.get(
        f"/previews/{token}/echo?x=1&y=2",
        headers={
            # Kept: content negotiation, conditional and range requests.
            "Accept": "text/html",
            "Accept-Language": "fr",
            "Accept-Encoding": "gzip",
            "Cache-Control": "no-cache",
            "If-None-Match": '"v1"',
            "Range": "bytes=0-",
            # Withheld: the platform's credentials, and who and where the buyer is.
            "Authorization": "Bearer platform-token",
            "Proxy-Authorization": "Basic cHJveHk6cHc=",
            "X-Forwarded-For": "203.0.113.9",
            "X-Forwarded-Host": "evil.example",
            "Forwarded": "for=203.0.113.9;proto=https",
            "X-Real-IP": "203.0.113.9",
            "True-Client-IP": "203.0.113.9",
            "CF-Connecting-IP": "203.0.113.9",
            "X-Client-IP": "203.0.113.9",
            "Fastly-Client-IP": "203.0.113.9",
            "Via": "1.1 front-proxy",
            "User-Agent": "Mozilla/5.0 (the buyer's browser)",
            "Referer": f"https://marketplace.example/previews/{token}/",
            "Origin": "https://marketplace.example",
            "X-Probe": "unlisted",
        },
    )

    assert response.status_code == 200
    body = body_of(response)
    seen = json.loads(body)
    assert seen["method"] == "GET"
    assert seen["path"] == "/echo?x=1&y=2"
    assert {name.lower(): value for name, value in seen["headers"]} == {
        "host": "preview",
        "x-forwarded-prefix": f"/previews/{token}",
        "accept": "text/html",
        "accept-language": "fr",
        "accept-encoding": "gzip",
        "cache-control": "no-cache",
        "if-none-match": '"v1"',
        "range": "bytes=0-",
    }
    # What the sandbox answers about the platform's origin is not passed on, nor is anything
    # it says that does not describe the body.
    assert "Set-Cookie" not in response
    assert response.cookies == {}
    assert response["Content-Security-Policy"] == PREVIEW_CSP
    assert response.get("X-Frame-Options") != "ALLOWALL"
    assert "X-Sandbox" not in response
    assert response["Content-Type"] == "application/json"
    assert response["Content-Length"] == str(len(body))
    assert_secured(response)
    session = PreviewSession.objects.get(pk=echo_preview.session.pk)
    assert session.requests_served == 1
    assert session.bytes_served == len(body)


# What acts on the whole origin, or is the platform's to set.
ORIGIN_WIDE = [
    "NEL",
    "Report-To",
    "Reporting-Endpoints",
    "Clear-Site-Data",
    "Refresh",
    "Link",
    "Alt-Svc",
    "WWW-Authenticate",
    "Access-Control-Allow-Origin",
    "Set-Cookie",
    "Server",
    "X-Sandbox",
]


@needs_sandbox
@pytest.mark.django_db(transaction=True)
def test_a_sandboxs_answer_passes_on_only_what_describes_its_body(echo_preview):
    client = Client()
    url = f"/previews/{echo_preview.token}/hostile"

    inline = client.get(url, {"disposition": 'inline; filename="a.html"'})
    # A download would seem to come from the platform: dropped, the body shown inline.
    attachment = client.get(url, {"disposition": 'attachment; filename="invoice.exe"'})

    for response in (inline, attachment):
        assert response.status_code == 200
        assert body_of(response) == b"hi"
        assert [name for name in ORIGIN_WIDE if name in response] == []
        assert response.cookies == {}
        assert response.get("Strict-Transport-Security") != "max-age=0"
        assert response["Content-Type"] == "text/html"
        assert response["ETag"] == '"v1"'
        assert response["Last-Modified"] == "Wed, 21 Oct 2015 07:28:00 GMT"
        assert response["Vary"] == "Accept-Language"
        assert response["Content-Language"] == "fr"
        assert response["Accept-Ranges"] == "none"
        assert_secured(response)
    assert inline["Content-Disposition"] == 'inline; filename="a.html"'
    assert "Content-Disposition" not in attachment


@needs_sandbox
@pytest.mark.django_db(transaction=True)
def test_an_odd_answer_is_passed_on_cleaned_or_refused_never_a_500(echo_preview):
    client = Client()
    prefix = f"/previews/{echo_preview.token}"

    folded = client.get(f"{prefix}/raw/folded")
    odd_statuses = [client.get(f"{prefix}/raw/{status}") for status in ("999", "103")]
    # Chunked with a Content-Length too: the chunks win (RFC 9112 §6.3), and the sandbox's
    # length, which would frame the answer otherwise than the bytes sent, is not passed on.
    framed = client.get(f"{prefix}/raw/chunked-and-length")

    assert folded.status_code == 200
    assert body_of(folded) == b"ok"
    # The reason phrase is the platform's: the sandbox's smuggled a bare CR and a header in.
    assert folded.reason_phrase == "OK"
    assert "Set-Cookie" not in folded
    assert folded["Content-Language"] == "en, fr"  # RFC 9112 §5.2: a fold is a space
    assert "X-Folded" not in folded
    assert "X-Control" not in folded
    assert_secured(folded)
    for response in odd_statuses:
        assert response.status_code == 503
        assert response.json()["code"] == "sandbox-unavailable"
        assert_secured(response)
    assert framed.status_code == 200
    assert "Content-Length" not in framed
    assert "Transfer-Encoding" not in framed
    assert body_of(framed) == b"abcde"


# A sandbox's Location → what the browser is sent ({token}: the preview's); None: dropped.
LOCATIONS = {
    "/next": "/previews/{token}/next",
    "/previews/{token}/next": "/previews/{token}/next",  # a server honouring X-Forwarded-Prefix
    "http://preview/next?a=1": "/previews/{token}/next?a=1",
    "HTTPS://Preview/next#top": "/previews/{token}/next#top",
    "next": "/previews/{token}/next",  # relative to /go
    "../../../../api/v1/me": "/previews/{token}/api/v1/me",
    "/%2e%2e/%2E%2E/api/v1/me": "/previews/{token}/api/v1/me",
    # Off the sandbox: dropped, the status kept.
    "https://example.com/next": None,
    "//example.com/next": None,
    "/\\example.com/next": None,
    "\\\\example.com/next": None,
    "/\t/example.com/next": None,
    "http://preview.example.com/next": None,
    "http://preview@example.com/next": None,
    "javascript:alert(document.domain)": None,
}


@needs_sandbox
@pytest.mark.django_db(transaction=True)
def test_a_sandboxs_redirect_stays_under_the_preview_prefix(echo_preview):
    token = echo_preview.token
    client = Client()

    redirects = {
        location: client.get(f"/previews/{token}/go", {"to": location.replace("{token}", token)})
        for location in LOCATIONS
    }

    assert {location: r.status_code for location, r in redirects.items()} == dict.fromkeys(
        LOCATIONS, 302
    )
    assert {location: r.get("Location") for location, r in redirects.items()} == {
        location: passed and passed.replace("{token}", token)
        for location, passed in LOCATIONS.items()
    }
    for response in redirects.values():
        assert_secured(response)


@needs_sandbox
@pytest.mark.django_db(transaction=True)
def test_a_request_body_is_proxied_up_to_one_mebibyte(echo_preview):
    token = echo_preview.token
    client = Client()
    small = client.post(f"/previews/{token}/form", data=b"a=1&b=2", content_type="text/plain")
    exact = b"x" * REQUEST_BODY_MAX
    largest = client.put(f"/previews/{token}/upload", data=exact, content_type="text/plain")

    seen = echoed(small)
    assert (seen["method"], seen["path"], seen["body_start"]) == ("POST", "/form", "a=1&b=2")
    assert {n.lower(): v for n, v in seen["headers"]}["content-type"] == "text/plain"
    seen = echoed(largest)
    assert seen["method"] == "PUT"
    assert seen["body_length"] == REQUEST_BODY_MAX
    assert seen["body_sha256"] == hashlib.sha256(exact).hexdigest()


@needs_sandbox
@pytest.mark.django_db(transaction=True)
def test_a_body_over_one_mebibyte_is_413_and_never_reaches_the_sandbox(echo_preview):
    token = echo_preview.token
    client = Client()
    before = echoed(client.get(f"/previews/{token}/count"))["answered"]

    refused = client.post(
        f"/previews/{token}/upload", data=b"x" * (REQUEST_BODY_MAX + 1), content_type="text/plain"
    )

    assert refused.status_code == 413
    assert refused.json()["code"] == "payload-too-large"
    assert_secured(refused)
    assert echoed(client.get(f"/previews/{token}/count"))["answered"] == before + 1


@needs_sandbox
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"HTTP_TRANSFER_ENCODING": "chunked"}, 411),
        ({"CONTENT_LENGTH": "abc"}, 400),  # marketplace.middleware.ContentLengthCheck
        ({"CONTENT_LENGTH": "-5"}, 400),
    ],
)
def test_a_body_whose_length_is_not_given_plainly_is_refused_before_the_sandbox(
    echo_preview, headers, status
):
    token = echo_preview.token
    client = Client()
    before = echoed(client.get(f"/previews/{token}/count"))["answered"]

    refused = client.generic("POST", f"/previews/{token}/upload", b"", **headers)

    assert refused.status_code == status
    assert refused["Content-Type"] == "application/problem+json"
    if status == 411:  # the 400s come from a middleware, before any view
        assert_secured(refused)
    assert echoed(client.get(f"/previews/{token}/count"))["answered"] == before + 1


@needs_sandbox
@pytest.mark.django_db(transaction=True)
def test_a_sandbox_that_died_is_503_then_the_sweep_ends_it(echo_preview):
    token = echo_preview.token
    session = PreviewSession.objects.get(pk=echo_preview.session.pk)
    assert Client().get(f"/previews/{token}/").status_code == 200

    assert LocalProvisioner().teardown(session.environment_id) is True
    dead = Client().get(f"/previews/{token}/")

    assert dead.status_code == 503
    assert dead.json()["code"] == "sandbox-unavailable"
    assert dead["Retry-After"] == "2"
    assert_secured(dead)
    assert previews_sweep().exited == 1
    gone = Client().get(f"/previews/{token}/")
    assert (gone.status_code, gone.json()["reason"]) == (410, "failed")
    assert PreviewSession.objects.get(pk=session.pk).end_detail == "its sandbox stopped"


# --- What a session can hold of the web server's threads ---------------------------------------


@needs_sandbox
@pytest.mark.django_db(transaction=True)
def test_a_sandbox_that_trickles_its_body_is_cut_at_the_deadline(echo_preview, settings):
    # One byte every 0.1 s: each wait is far inside the 5 s allowed for one, so only the
    # deadline of the whole exchange stops it.
    settings.PREVIEW_PROXY_SECONDS = 1
    settings.PREVIEW_PROXY_WAIT_SECONDS = 5
    started = time.monotonic()

    response = Client().get(f"/previews/{echo_preview.token}/trickle")
    received = bytearray()

    def read() -> None:
        for chunk in response.streaming_content:
            received.extend(chunk)

    with pytest.raises(PreviewStreamCut):
        read()

    elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert response["Content-Length"] == "1000"  # announced, so the cut shows as incomplete
    assert 1 <= elapsed < 2
    assert 3 <= len(received) <= 12
    session = PreviewSession.objects.get(pk=echo_preview.session.pk)
    assert (session.requests_served, session.bytes_served) == (1, len(received))


@needs_sandbox
@pytest.mark.django_db(transaction=True)
def test_a_sandbox_whose_answer_does_not_begin_in_time_is_504(echo_preview, settings):
    url = f"/previews/{echo_preview.token}"
    settings.PREVIEW_PROXY_WAIT_SECONDS = 5
    settings.PREVIEW_PROXY_SECONDS = 1
    started = time.monotonic()
    # Headers a byte every 0.1 s: only the deadline of the whole exchange stops them.
    trickled = Client().get(f"{url}/trickle-headers")
    trickled_for = time.monotonic() - started
    # Nothing at all: stopped by the wait for the answer to begin, well before the deadline.
    settings.PREVIEW_PROXY_WAIT_SECONDS = 0.5
    settings.PREVIEW_PROXY_SECONDS = 30
    started = time.monotonic()
    silent = Client().get(f"{url}/silent")
    silent_for = time.monotonic() - started

    assert 1 <= trickled_for < 2
    assert 0.5 <= silent_for < 1.5
    for response in (trickled, silent):
        assert response.status_code == 504
        assert response.json()["code"] == "sandbox-timeout"
        assert (
            response.json()["detail"] == "The preview's sandbox did not answer in time; try again."
        )
        assert_secured(response)
    # Their slots were given back: the next request is answered.
    settings.PREVIEW_CONCURRENT_REQUESTS = 1
    assert echoed(Client().get(f"{url}/after"))["path"] == "/after"


def assert_busy(response: Any) -> None:
    assert response.status_code == 429
    assert response.json()["code"] == "preview-busy"
    assert response["Retry-After"] == "1"
    assert response.json()["retry_after"] == 1
    assert_secured(response)


@needs_sandbox
@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_of_a_session_beyond_its_limit_are_429_busy(echo_preview, settings):
    settings.PREVIEW_CONCURRENT_REQUESTS = 2
    token = echo_preview.token
    senders = 6
    answered = threading.Barrier(senders, timeout=30)
    statuses: list[int] = []
    busy: list[Any] = []

    def send() -> None:
        try:
            response = Client().get(f"/previews/{token}/echo")
            statuses.append(response.status_code)
            if response.status_code == 429:
                busy.append(response)
            # Each answer is held, unread, until every sender has one: the streams that got a
            # slot keep it meanwhile.
            answered.wait()
            body_of(response)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=send) for _ in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert sorted(statuses) == [200, 200, 429, 429, 429, 429]
    for response in busy:
        assert_busy(response)
    # Every slot was given back once the answers were sent.
    assert [echoed(Client().get(f"/previews/{token}/again"))["path"] for _ in range(3)] == [
        "/again"
    ] * 3


@pytest.mark.django_db
def test_a_sample_streams_count_against_the_sessions_limit_and_no_other(
    client, token, buyer, sample_sku, settings
):
    settings.PREVIEW_CONCURRENT_REQUESTS = 2
    other = preview_open(buyer=buyer, sku_slug=sample_sku.slug).token
    # Streams to a client that has not read them yet (a slow reader) hold their slots.
    held = [client.get(f"/previews/{token}/notes.txt") for _ in range(2)]

    refused = client.get(f"/previews/{token}/notes.txt")
    # What is answered at once takes no slot; another session has its own.
    head = client.head(f"/previews/{token}/notes.txt")
    elsewhere = client.get(f"/previews/{other}/notes.txt")
    assert [r.status_code for r in held] == [200, 200]
    assert_busy(refused)
    assert head.status_code == 200
    assert body_of(elsewhere) == NOTES
    assert body_of(held[0]) == NOTES  # read to its end: its slot is given back
    again = client.get(f"/previews/{token}/notes.txt")
    assert body_of(again) == NOTES
    assert body_of(held[1]) == NOTES


@pytest.mark.django_db
def test_a_slot_never_given_back_expires(client, token, settings):
    # A request that dies without closing its stream (a killed process) holds its slot for
    # twice the proxy's deadline, here 1 s, not for the rest of the session.
    settings.PREVIEW_CONCURRENT_REQUESTS = 1
    settings.PREVIEW_PROXY_SECONDS = 0.5
    lost = client.get(f"/previews/{token}/notes.txt")
    assert lost.status_code == 200  # never read nor closed

    assert_busy(client.get(f"/previews/{token}/notes.txt"))
    time.sleep(1.1)
    assert body_of(client.get(f"/previews/{token}/notes.txt")) == NOTES


@pytest.mark.django_db
def test_a_sessions_requests_beyond_its_rate_are_429(client, token, buyer, sample_sku, settings):
    settings.PREVIEW_REQUEST_RATE = "3/min"
    other = preview_open(buyer=buyer, sku_slug=sample_sku.slug).token

    answers = [client.get(f"/previews/{token}/notes.txt") for _ in range(4)]

    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert [body_of(a) for a in answers[:3]] == [NOTES] * 3
    refused = answers[-1]
    assert refused.json()["code"] == "throttled"
    assert refused.json()["limit"] == "preview"
    assert refused.json()["detail"].startswith("More than 3/min (preview); try again in ")
    assert 1 <= int(refused["Retry-After"]) <= 60
    assert_secured(refused)
    # Per session: another of the same buyer, from the same address, goes on.
    assert client.get(f"/previews/{other}/notes.txt").status_code == 200
    assert PreviewSession.objects.get(token_hash=token_hash(token)).requests_served == 3


@pytest.mark.django_db
def test_beyond_the_web_process_preview_requests_it_is_503_busy_for_every_session(
    client, token, buyer, sample_sku, settings
):
    # However many sessions ask, the process keeps threads for everything else.
    settings.PREVIEW_PROCESS_REQUESTS = 2
    other = preview_open(buyer=buyer, sku_slug=sample_sku.slug).token
    held = [client.get(f"/previews/{token}/notes.txt"), client.get(f"/previews/{other}/notes.txt")]

    refused = client.get(f"/previews/{other}/notes.txt")

    assert [r.status_code for r in held] == [200, 200]
    assert refused.status_code == 503
    assert refused.json()["code"] == "previews-busy"
    assert refused["Retry-After"] == "1"
    assert_secured(refused)
    assert body_of(held[0]) == NOTES  # read to its end: the process's slot is given back
    assert body_of(client.get(f"/previews/{other}/notes.txt")) == NOTES
    assert body_of(held[1]) == NOTES
