"""A stand-in for Finance, the company's ledger service: a plain HTTP server on loopback that
speaks the ledger API documented in marketplace/finance.py, so the real client (HttpFinance,
`requests`) is tested against a real socket.

    POST /v1/ledger/entries    Authorization: Bearer <token> (401 otherwise), Idempotency-Key
                               (400 without one); a body that is not a ledger entry: 422.
                               New key: 201 {"id"}; the same key and body again: 200 with the
                               same id; the same key with another body: 409.
    GET  /v1/ledger/entries?order_id=<uuid>[&order_id=...]
                               200 {"entries": [{"id", "order_id", "kind", "amount", "currency"}]}

What a test controls:
- `down = True`: every request answers 503 until it is set back to False.
- `refuse_connections()` / `restore()`: the server stops listening (clients get "connection
  refused", an outage at the TCP level) and listens again on the same port.
- `fail_next(n, status)`: the next n requests answer `status` (a JSON error body), whatever
  they are; `reply_next(status, body, content_type)` scripts one raw answer (a proxy's HTML
  page, say); `delay` holds every answer back that many seconds (a client's timeout).
- `entries` (what the ledger holds, copies), `entry_amount_set(id, amount)` (a ledger that
  disagrees with the platform), `requests` (every request answered, headers included).

Fixture `finance_api`: a fresh server for one test, with settings.FINANCE_URL and FINANCE_TOKEN
pointing at it (list it before `celery_worker` so a worker process is given the same).

Standalone, for running the platform against it by hand:
    python -m tests.support.finance_api --port 8099 --token secret
"""

import argparse
import json
import re
import secrets
import threading
import traceback
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

ENTRIES_PATH = "/v1/ledger/entries"
DEFAULT_TOKEN = "finance-test-token"


@dataclass(frozen=True)
class FinanceReply:
    status: int
    body: bytes
    content_type: str = "application/json"


def _json_reply(status: int, document: Any) -> FinanceReply:
    return FinanceReply(status, json.dumps(document).encode())


def _problem(status: int, detail: str) -> FinanceReply:
    return _json_reply(status, {"status": status, "detail": detail})


@dataclass(frozen=True)
class FinanceRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # names lower-cased
    body: Any  # parsed JSON, or None
    status: int  # what the stand-in answered


@dataclass
class _Entry:
    id: str
    idempotency_key: str
    body: dict[str, Any]
    amount: int = field(init=False)

    def __post_init__(self) -> None:
        self.amount = int(self.body["amount"])

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "order_id": self.body["order_id"],
            "kind": self.body["kind"],
            "amount": self.amount,
            "currency": self.body["currency"],
        }


def _entry_problem(body: Any) -> str:
    """What makes `body` something Finance would not book, or ''."""
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    try:
        uuid.UUID(str(body.get("order_id")))
    except ValueError:
        return "order_id must be a UUID"
    kind, amount = body.get("kind"), body.get("amount")
    if kind not in ("sale", "refund"):
        return "kind must be sale or refund"
    if not isinstance(amount, int) or isinstance(amount, bool):
        return "amount must be an integer in minor units"
    if (kind == "sale" and amount <= 0) or (kind == "refund" and amount >= 0):
        return "a sale is positive and a refund negative"
    if not isinstance(body.get("currency"), str) or not re.fullmatch(r"[A-Z]{3}", body["currency"]):
        return "currency must be an ISO 4217 code"
    if not isinstance(body.get("occurred_at"), str):
        return "occurred_at must be an ISO 8601 time"
    return ""


class FinanceServer:
    def __init__(self, *, token: str = DEFAULT_TOKEN, port: int = 0) -> None:
        self.token = token
        self.down = False
        self.delay = 0.0
        self._lock = threading.Lock()
        self._script: deque[FinanceReply] = deque()
        self._entries: list[_Entry] = []
        self._by_key: dict[str, _Entry] = {}
        self._requests: list[FinanceRequest] = []
        self._errors: list[str] = []
        self._release = threading.Event()
        self._http: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._port = port

    # Lifecycle.

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def listening(self) -> bool:
        return self._http is not None

    def start(self) -> None:
        http = _FinanceHttpServer(("127.0.0.1", self._port), self)
        self._port = http.server_address[1]
        self._http = http
        self._thread = threading.Thread(
            target=http.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"finance-test-server-{self._port}",
            daemon=True,
        )
        self._thread.start()

    def _close(self) -> None:
        if self._http is None:
            return
        self._http.shutdown()
        self._http.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._http = None
        self._thread = None

    def stop(self) -> None:
        self._release.set()
        self._close()

    def refuse_connections(self) -> None:
        """Stops listening: connecting now fails at once with 'connection refused'."""
        self._close()

    def restore(self) -> None:
        """Listens again on the same port (and is no longer `down`)."""
        self.down = False
        if self._http is None:
            self.start()

    # What a test sets up and reads.

    def fail_next(self, count: int = 1, status: int = 503) -> None:
        with self._lock:
            for _ in range(count):
                self._script.append(_problem(status, f"scripted failure {status}"))

    def reply_next(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        with self._lock:
            self._script.append(FinanceReply(status, body, content_type))

    @property
    def entries(self) -> list[dict[str, Any]]:
        with self._lock:
            return [
                {**entry.public(), "idempotency_key": entry.idempotency_key, "body": entry.body}
                for entry in self._entries
            ]

    def entry_amount_set(self, entry_id: str, amount: int) -> None:
        with self._lock:
            next(entry for entry in self._entries if entry.id == entry_id).amount = amount

    @property
    def requests(self) -> list[FinanceRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def posts(self) -> list[FinanceRequest]:
        return [request for request in self.requests if request.method == "POST"]

    @property
    def errors(self) -> list[str]:
        with self._lock:
            return list(self._errors)

    # Answering (called from the connection threads).

    def _answer(
        self, method: str, target: str, headers: dict[str, str], raw: bytes
    ) -> tuple[FinanceReply, threading.Event]:
        split = urlsplit(target)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        with self._lock:
            reply = self._decide(method, split.path, parse_qs(split.query), headers, body, raw)
            self._requests.append(
                FinanceRequest(
                    method, split.path, parse_qs(split.query), headers, body, reply.status
                )
            )
            return reply, self._release

    def _decide(
        self,
        method: str,
        path: str,
        query: dict[str, list[str]],
        headers: dict[str, str],
        body: Any,
        raw: bytes,
    ) -> FinanceReply:
        if self.down:
            return _problem(503, "Finance is down for maintenance")
        if self._script:
            return self._script.popleft()
        if path != ENTRIES_PATH:
            return _problem(404, f"no such resource {path}")
        if headers.get("authorization") != f"Bearer {self.token}":
            return _problem(401, "a valid bearer token is required")
        if method == "GET":
            wanted = set(query.get("order_id", []))
            return _json_reply(
                200,
                {"entries": [e.public() for e in self._entries if e.body["order_id"] in wanted]},
            )
        if method != "POST":
            return _problem(405, f"{method} is not allowed here")
        key = headers.get("idempotency-key", "")
        if not key:
            return _problem(400, "the Idempotency-Key header is required")
        if body is None and raw:
            return _problem(400, "the body is not JSON")
        problem = _entry_problem(body)
        if problem:
            return _problem(422, problem)
        existing = self._by_key.get(key)
        if existing is not None:
            if existing.body != body:
                return _problem(409, f"idempotency key {key} was used with another entry")
            return _json_reply(200, {"id": existing.id})
        entry = _Entry(id="fin_" + secrets.token_hex(10), idempotency_key=key, body=body)
        self._entries.append(entry)
        self._by_key[key] = entry
        return _json_reply(201, {"id": entry.id})

    def _failed(self, error: str) -> None:
        with self._lock:
            self._errors.append(error)


class _Handler(BaseHTTPRequestHandler):
    server: "_FinanceHttpServer"

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the server records what tests need

    def _handle(self) -> None:
        try:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {name.lower(): value for name, value in self.headers.items()}
            reply, release = self.server.finance._answer(self.command, self.path, headers, raw)
        except Exception:
            self.server.finance._failed(traceback.format_exc())
            reply, release = _problem(500, "the stand-in failed"), threading.Event()
        delay = self.server.finance.delay
        if delay and release.wait(delay):
            return  # the server is stopping; nobody waits for this answer any more
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)
        except OSError:
            pass  # a client that timed out has gone


class _FinanceHttpServer(ThreadingHTTPServer):
    allow_reuse_address = True  # restore() binds the same port again at once

    def __init__(self, address: tuple[str, int], finance: FinanceServer) -> None:
        self.finance = finance
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client hanging up early is not the test's concern


@pytest.fixture
def finance_api(settings: Any) -> Iterator[FinanceServer]:
    """A fresh Finance stand-in for this test, with settings pointing the platform at it."""
    server = FinanceServer()
    server.start()
    settings.FINANCE_URL = server.url
    settings.FINANCE_TOKEN = server.token
    settings.FINANCE_TIMEOUT_SECONDS = 2.0
    try:
        yield server
    finally:
        errors = server.errors
        server.stop()
    if errors:
        pytest.fail("the Finance stand-in failed:\n" + "\n".join(errors), pytrace=False)


def main() -> None:
    parser = argparse.ArgumentParser(description="A local stand-in for the Finance ledger API.")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--token", default=DEFAULT_TOKEN)
    args = parser.parse_args()
    server = FinanceServer(token=args.token, port=args.port)
    server.start()
    print(f"Finance stand-in on {server.url} (token {args.token}); Ctrl-C stops it", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
