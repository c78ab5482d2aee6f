"""A stand-in for the outside moderation policy service: a plain HTTP server on loopback that
speaks the API of catalog.moderation.backends, so the real client (HttpBackend, `requests`) is
tested against a real socket.

    POST /v1/reviews     JSON {"subject", "sku", "partner", "category", "version", "texts"}
    POST /v1/artifacts   ?sku=&partner=&category=&sha256=&size=, the bytes as the body
    -> 200 {"outcome", "reasons": [{"code", "message", "outcome"}]}
    Authorization: Bearer <token> when the server has one (401 otherwise).

Its policy: text containing "forbidden" is blocked (`policy-forbidden-word`), text containing
"review me" is flagged (`policy-needs-review`); an artifact containing b"MALWARE" is blocked
(`policy-malware`); anything else passes.

What a test controls: `fail_next(n, status)` (the next n requests answer `status`),
`reply_next(status, body)` (one raw answer), `delay` (seconds before every answer),
`requests` (every request seen: path, query, headers, body).
"""

import json
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

DEFAULT_TOKEN = "moderation-test-token"


@dataclass(frozen=True)
class SeenRequest:
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


def _verdict(reasons: list[dict[str, str]]) -> dict[str, Any]:
    outcome = "pass"
    if any(reason["outcome"] == "block" for reason in reasons):
        outcome = "block"
    elif reasons:
        outcome = "flag"
    return {"outcome": outcome, "reasons": reasons}


def text_verdict(texts: dict[str, str]) -> dict[str, Any]:
    reasons = []
    joined = " ".join(texts.values()).lower()
    if "forbidden" in joined:
        reasons.append(
            {"code": "policy-forbidden-word", "outcome": "block", "message": "a forbidden word"}
        )
    if "review me" in joined:
        reasons.append(
            {"code": "policy-needs-review", "outcome": "flag", "message": "asks for review"}
        )
    return _verdict(reasons)


def artifact_verdict(body: bytes) -> dict[str, Any]:
    if b"MALWARE" in body:
        return _verdict(
            [{"code": "policy-malware", "outcome": "block", "message": "a known malware sample"}]
        )
    return _verdict([])


class ModerationServer:
    def __init__(self, *, token: str = DEFAULT_TOKEN) -> None:
        self.token = token
        self.delay = 0.0
        self.requests: list[SeenRequest] = []
        self.errors: list[str] = []
        self._scripted: deque[tuple[int, bytes]] = deque()
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def fail_next(self, count: int = 1, status: int = 503) -> None:
        with self._lock:
            self._scripted.extend([(status, b'{"error": "scripted"}')] * count)

    def reply_next(self, status: int, body: bytes) -> None:
        with self._lock:
            self._scripted.append((status, body))

    def answer(
        self, path: str, query: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, bytes]:
        self.requests.append(SeenRequest(path, parse_qs(query), headers, body))
        with self._lock:
            if self._scripted:
                return self._scripted.popleft()
        if self.token and headers.get("authorization") != f"Bearer {self.token}":
            return 401, b'{"error": "unauthorized"}'
        if path == "/v1/reviews":
            document = json.loads(body)
            return 200, json.dumps(text_verdict(document["texts"])).encode()
        if path == "/v1/artifacts":
            return 200, json.dumps(artifact_verdict(body)).encode()
        return 404, b'{"error": "no such path"}'


def _handler(server: ModerationServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            try:
                body = self._body()
                parts = urlsplit(self.path)
                headers = {name.lower(): value for name, value in self.headers.items()}
                if server.delay:
                    threading.Event().wait(server.delay)
                status, reply = server.answer(parts.path, parts.query, headers, body)
            except Exception as exc:  # a broken stand-in must fail the test, loudly
                server.errors.append(repr(exc))
                status, reply = 500, b'{"error": "stand-in failed"}'
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        self.rfile.readline()
                        break
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("Content-Length", "0")))

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def moderation_api(settings: Any) -> Iterator[ModerationServer]:
    """A fresh policy-service stand-in, with the platform's http moderation backend on it."""
    server = ModerationServer()
    server.start()
    settings.MODERATION_BACKEND = "http"
    settings.MODERATION_URL = server.url
    settings.MODERATION_TOKEN = server.token
    settings.MODERATION_TIMEOUT_SECONDS = 2.0
    try:
        yield server
    finally:
        server.stop()
    if server.errors:
        pytest.fail("the moderation stand-in failed:\n" + "\n".join(server.errors), pytrace=False)
