"""/previews/{token}/…: a sample's files from storage, or a proxy to the session's sandbox."""

import hashlib
import io
import json
import textwrap
import time
import zipfile
from typing import Any

import pytest
from django.core.files.storage import default_storage
from django.test import Client

from catalog.models import Sku
from marketplace.models import User
from previews.models import EndReason, MaterialKind, PreviewFile, PreviewSession, SessionStatus
from previews.provisioners.local import LocalProvisioner
from previews.sandbox import available
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
from previews.serving import PREVIEW_CSP, REQUEST_BODY_MAX
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

# Serves on the Unix socket the sandbox is given: echoes what it was sent as JSON (with how many
# requests it has answered), redirects /go to /next, and tries to set a cookie and its own CSP.
ECHO_SERVER = textwrap.dedent(
    """
    import hashlib
    import http.server
    import json
    import os
    import socketserver

    answered = 0


    class Handler(http.server.BaseHTTPRequestHandler):
        def address_string(self):
            return "preview-socket"

        def log_message(self, *args):
            pass

        def answer(self):
            global answered
            answered += 1
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if self.path.startswith("/go"):
                # /go: a path; /go-prefixed: under X-Forwarded-Prefix, as a server honouring it
                # writes; /go-absolute: a URL on the Host it was sent.
                prefix = self.headers.get("X-Forwarded-Prefix", "")
                location = {
                    "/go": "/next",
                    "/go-prefixed": prefix + "/next",
                    "/go-absolute": "http://preview/next?a=1",
                    "/go-away": "https://example.com/next",
                }[self.path]
                self.send_response(302)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            payload = json.dumps(
                {
                    "answered": answered,
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

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = answer


    path = os.environ["PREVIEW_SOCKET"]
    if os.path.exists(path):
        os.unlink(path)
    with socketserver.UnixStreamServer(path, Handler) as server:
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
def test_a_sandbox_sees_neither_the_platforms_cookies_nor_its_credentials(echo_preview):
    token = echo_preview.token
    client = Client()
    client.cookies["sessionid"] = "platform-session"
    client.cookies["csrftoken"] = "k" * 32  # well formed: a malformed one is replaced

    response = client.get(
        f"/previews/{token}/echo?x=1&y=2",
        HTTP_AUTHORIZATION="Bearer platform-token",
        HTTP_PROXY_AUTHORIZATION="Basic cHJveHk6cHc=",
        HTTP_X_FORWARDED_FOR="203.0.113.9",
        HTTP_X_FORWARDED_HOST="evil.example",
        HTTP_FORWARDED="for=203.0.113.9;proto=https",
        HTTP_X_REAL_IP="203.0.113.9",
        HTTP_X_PROBE="kept",
    )

    assert response.status_code == 200
    body = body_of(response)
    seen = json.loads(body)
    headers = {name.lower(): value for name, value in seen["headers"]}
    assert seen["method"] == "GET"
    assert seen["path"] == "/echo?x=1&y=2"
    assert "cookie" not in headers
    assert "authorization" not in headers
    assert "proxy-authorization" not in headers
    assert "x-forwarded-for" not in headers
    assert "x-forwarded-host" not in headers
    assert "forwarded" not in headers  # the buyer's address is not the sandbox's to know
    assert "x-real-ip" not in headers
    assert headers["host"] == "preview"
    assert headers["x-forwarded-prefix"] == f"/previews/{token}"
    assert headers["x-probe"] == "kept"
    # What the sandbox answers about the platform's origin is not passed on; its own headers are.
    assert "Set-Cookie" not in response
    assert response.cookies == {}
    assert response["Content-Security-Policy"] == PREVIEW_CSP
    assert response.get("X-Frame-Options") != "ALLOWALL"
    assert response["X-Sandbox"] == "echo"
    assert response["Content-Type"] == "application/json"
    assert_secured(response)
    session = PreviewSession.objects.get(pk=echo_preview.session.pk)
    assert session.requests_served == 1
    assert session.bytes_served == len(body)


@needs_sandbox
@pytest.mark.django_db(transaction=True)
def test_a_sandboxs_redirect_stays_under_the_preview_prefix(echo_preview):
    token = echo_preview.token

    client = Client()

    redirects = {
        path: client.get(f"/previews/{token}/{path}")
        for path in ("go", "go-prefixed", "go-absolute", "go-away")
    }

    assert {path: r.status_code for path, r in redirects.items()} == dict.fromkeys(redirects, 302)
    assert {path: r["Location"] for path, r in redirects.items()} == {
        "go": f"/previews/{token}/next",
        "go-prefixed": f"/previews/{token}/next",
        "go-absolute": f"/previews/{token}/next?a=1",
        "go-away": "https://example.com/next",  # another site's address is the sandbox's to give
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
