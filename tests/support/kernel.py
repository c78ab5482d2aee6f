"""A stand-in for the Kernel: an HTTPS server on loopback that speaks its manifest and audit-append
APIs and, like the real one, refuses any client that does not present a certificate from the
company CA.

Fixtures:
- `kernel_pki` (session): a test CA, a server certificate for 127.0.0.1 and a client certificate
  signed by it, and a rogue CA with a client certificate of its own, as PEM files.
- `kernel_server` (session): the server, running in a background thread.
- `kernel` (per test): the same server, emptied of what earlier tests left, with
  settings.KERNEL_* pointing at it with the good client certificate.

Unless a test scripts its replies (`kernel.script(rejected("..."), ...)`), the server answers
as the Kernel would: it checks the Ed25519 signature against the keys it knows
(`kernel.register_key(...)`) among those the platform says are registered. It records every
request it answered and every TLS handshake it refused, so tests can assert what the client sent
and with which certificate.

Its audit copy (`kernel.audit_events`) behaves like the Kernel's (marketplace/kernel.py): an
append checks each event's hash and link, answers 200 with how far its copy now goes, treats
events it already holds as acknowledged when they are the same, and answers 409 with where its
copy ends when a batch starts past it. `kernel.audit_truncate(n)` makes it lose everything
after event n, as a Kernel restored from an old backup would. It notes when it acknowledged
each event (`audit_acknowledged_at`), for the lag benchmark.
"""

import base64
import contextlib
import hashlib
import json
import socket
import ssl
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tests.support.pki import KernelPki, kernel_pki_create

VERIFY_PATH = "/v1/manifests/verify"
AUDIT_PATH = "/v1/audit/events"
AUDIT_HEAD_PATH = "/v1/audit/head"
GENESIS_HASH = "0" * 64
# Long enough for a loaded CI machine, short enough that a stuck client cannot hang the session.
HANDSHAKE_TIMEOUT_SECONDS = 5.0


# --- Replies -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelReply:
    """One scripted answer. `delay` holds the answer back (released early when the test ends)."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0


def json_reply(status: int, document: Any, *, delay: float = 0.0) -> KernelReply:
    return KernelReply(status=status, body=json.dumps(document).encode(), delay=delay)


def verified(key_id: str, reason: str = "") -> KernelReply:
    return json_reply(
        200, {"verified": True, "reason": reason or f"signed with key {key_id}", "key_id": key_id}
    )


def rejected(reason: str, *, status: int = 200, field: str = "reason") -> KernelReply:
    """A rejection: 200 with verified false, or a 4xx naming the problem in `field`."""
    document: dict[str, Any] = {field: reason}
    if status == 200:
        document["verified"] = False
    return json_reply(status, document)


def server_error(status: int = 500) -> KernelReply:
    return json_reply(status, {"detail": "internal error"})


def not_json(status: int = 200) -> KernelReply:
    # What a load balancer in front of the Kernel serves when it has nowhere to send a request.
    return KernelReply(
        status=status, body=b"<html><body>upstream says hi</body></html>", content_type="text/html"
    )


def slow(seconds: float, then: KernelReply | None = None) -> KernelReply:
    reply = then or verified("k1")
    return KernelReply(
        status=reply.status,
        body=reply.body,
        content_type=reply.content_type,
        headers=reply.headers,
        delay=seconds,
    )


def redirect(location: str, *, status: int = 307) -> KernelReply:
    return KernelReply(
        status=status, body=b"", content_type="text/plain", headers=(("Location", location),)
    )


# --- Server ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReceivedRequest:
    method: str
    path: str
    content_type: str
    body: Any  # the parsed JSON, or None when the body was not JSON
    client_subject: str  # RFC 4514 subject of the certificate the client presented
    client_issuer: str


def _canonical(manifest: Any) -> bytes:
    # Written out here rather than imported from marketplace.canonical: the Kernel is another
    # company's code, so a change to our canonical form must show up as a failed verification.
    return json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _decode_signature(text: str) -> bytes:
    text = text.replace("-", "+").replace("_", "/")
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


class KernelServer:
    def __init__(self, pki: KernelPki) -> None:
        self.pki = pki
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._script: deque[KernelReply] = deque()
        self._requests: list[ReceivedRequest] = []
        self._refusals: list[str] = []
        self._errors: list[str] = []
        self._keys: dict[str, dict[str, Ed25519PublicKey]] = {}
        self._audit: list[dict[str, Any]] = []  # export-line objects, events 1..n in order
        self._audit_acknowledged_at: dict[int, float] = {}  # sequence -> time.time()
        self._audit_take_at_most: int | None = None
        self._release = threading.Event()
        # Bumped by reset(). A connection thread can finish after its test is over (a refused
        # handshake is recorded a moment after the client sees the alert); what it reports then
        # must not land in the next test's records.
        self._generation = 0

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_cert_chain(pki.server.cert, pki.server.key)
        context.load_verify_locations(cafile=pki.ca_cert)
        self._http = _TlsHttpServer(("127.0.0.1", 0), self, context)
        self._thread = threading.Thread(
            target=self._http.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="kernel-test-server",
            daemon=True,
        )

    @property
    def port(self) -> int:
        return self._http.server_address[1]

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._release.set()
        self._http.shutdown()
        self._http.server_close()  # waits for the connection threads
        self._thread.join(timeout=5)

    # What a test sets up.

    def reset(self) -> None:
        """Forgets scripts, keys and records, and lets go of any reply still being held."""
        with self._lock:
            self._generation += 1
            self._release.set()
            self._release = threading.Event()
            self._script.clear()
            self._requests.clear()
            self._refusals.clear()
            self._errors.clear()
            self._keys.clear()
            self._audit.clear()
            self._audit_acknowledged_at.clear()
            self._audit_take_at_most = None

    def script(self, *replies: KernelReply) -> None:
        """Queues replies for the next requests, in order; after them the server verifies."""
        with self._lock:
            self._script.extend(replies)

    def register_key(self, publisher: str, key_id: str, public_key: Ed25519PublicKey) -> None:
        with self._lock:
            self._keys.setdefault(publisher, {})[key_id] = public_key

    def audit_truncate(self, through: int) -> None:
        """Forgets the audit events after `through`, like a Kernel restored from a backup."""
        with self._lock:
            del self._audit[through:]
            for sequence in [s for s in self._audit_acknowledged_at if s > through]:
                del self._audit_acknowledged_at[sequence]

    def audit_take_at_most(self, count: int | None) -> None:
        """Keeps at most `count` new events of each append, acknowledging only those, as a
        Kernel that caps its batches does."""
        with self._lock:
            self._audit_take_at_most = count

    # What a test looks at.

    @property
    def audit_events(self) -> list[dict[str, Any]]:
        """The Kernel's copy of the chain: {"hash": ..., "record": {...}} for events 1..n."""
        with self._lock:
            return list(self._audit)

    @property
    def audit_acknowledged_at(self) -> dict[int, float]:
        """When each event of the copy was first acknowledged (time.time(), this process)."""
        with self._lock:
            return dict(self._audit_acknowledged_at)

    def audit_requests(self) -> list[ReceivedRequest]:
        return [request for request in self.requests if request.path == AUDIT_PATH]

    @property
    def requests(self) -> list[ReceivedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def refusals(self) -> list[str]:
        with self._lock:
            return list(self._refusals)

    @property
    def errors(self) -> list[str]:
        with self._lock:
            return list(self._errors)

    def wait_for_refusal(self, timeout: float = 2.0) -> str:
        """The first refused handshake. The client can give up on an alert a moment before the
        server thread that sent it has recorded why, so this waits for the record."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._refusals, timeout=timeout):
                raise AssertionError(f"the Kernel refused no handshake within {timeout}s")
            return self._refusals[0]

    # Called from the connection threads.

    def _answer(self, request: ReceivedRequest) -> tuple[KernelReply, threading.Event]:
        with self._lock:
            self._requests.append(request)
            reply = self._script.popleft() if self._script else None
            keys = dict(self._keys.get(_publisher(request), {}))
            release = self._release
            if reply is None and request.path == AUDIT_PATH:
                # Under the lock: appends from concurrent connections apply one at a time.
                reply = self._audit_append(request)
            if reply is None and request.path == AUDIT_HEAD_PATH and request.method == "GET":
                last = self._audit[-1] if self._audit else None
                reply = json_reply(
                    200,
                    {"acknowledged_through": len(self._audit), "hash": last and last["hash"]},
                )
        if reply is None:
            reply = _verify(request, keys)
        return reply, release

    def _audit_append(self, request: ReceivedRequest) -> KernelReply:
        """Caller holds self._lock."""
        events = request.body.get("events") if isinstance(request.body, dict) else None
        if not isinstance(events, list) or not events:
            return json_reply(422, {"detail": "expected a non-empty list of events"})
        for event in events:
            problem = _audit_event_problem(event)
            if problem:
                return json_reply(422, {"detail": problem})
        held = len(self._audit)
        first = events[0]["record"]["sequence"]
        if first > held + 1:
            return json_reply(
                409,
                {
                    "acknowledged_through": held,
                    "detail": f"event {first} comes after {held + 1}, which is missing",
                },
            )
        added: list[dict[str, Any]] = []  # applied only if the whole batch is good
        for event in events:
            sequence = event["record"]["sequence"]
            if sequence <= held:
                if self._audit[sequence - 1] != event:
                    return json_reply(
                        422, {"detail": f"event {sequence} differs from the one acknowledged"}
                    )
                continue
            last = added[-1] if added else (self._audit[-1] if self._audit else None)
            previous = last["hash"] if last else GENESIS_HASH
            if sequence != held + len(added) + 1 or event["record"]["prev_hash"] != previous:
                return json_reply(
                    422,
                    {"detail": f"event {sequence} does not follow event {held + len(added)}"},
                )
            added.append(event)
        if self._audit_take_at_most is not None:
            del added[self._audit_take_at_most :]
        now = time.time()
        for event in added:
            self._audit.append(event)
            self._audit_acknowledged_at[event["record"]["sequence"]] = now
        return json_reply(200, {"acknowledged_through": len(self._audit)})

    def _connected(self) -> int:
        with self._lock:
            return self._generation

    def _refused(self, reason: str, generation: int) -> None:
        with self._changed:
            if generation == self._generation:
                self._refusals.append(reason)
                self._changed.notify_all()

    def _failed(self, error: str, generation: int) -> None:
        with self._lock:
            if generation == self._generation:
                self._errors.append(error)


def _audit_event_problem(event: Any) -> str:
    """Why an element of an audit append is not an event whose hash covers its record."""
    if not (
        isinstance(event, dict)
        and set(event) == {"hash", "record"}
        and isinstance(event["hash"], str)
        and isinstance(event["record"], dict)
    ):
        return 'every event is {"hash": ..., "record": {...}}'
    record = event["record"]
    sequence = record.get("sequence")
    if (
        not isinstance(sequence, int)
        or sequence < 1
        or not isinstance(record.get("prev_hash"), str)
    ):
        return "every record has a positive sequence and a prev_hash"
    if hashlib.sha256(_canonical(record)).hexdigest() != event["hash"]:
        return f"event {sequence}'s hash does not cover its record"
    return ""


def _publisher(request: ReceivedRequest) -> str:
    body = request.body
    return body.get("publisher", "") if isinstance(body, dict) else ""


def _verify(request: ReceivedRequest, known_keys: dict[str, Ed25519PublicKey]) -> KernelReply:
    """The Kernel's own check: the signature must be good under a key it knows for the publisher
    that the platform also lists as registered."""
    if request.path != VERIFY_PATH:
        return json_reply(404, {"detail": f"no endpoint at {request.path}"})
    body = request.body
    if not (
        isinstance(body, dict)
        and isinstance(body.get("publisher"), str)
        and isinstance(body.get("manifest"), dict)
        and isinstance(body.get("signature"), str)
        and isinstance(body.get("registered_key_ids"), list)
    ):
        return json_reply(
            422, {"detail": "expected publisher, manifest, signature and registered_key_ids"}
        )
    try:
        signature = _decode_signature(body["signature"])
    except ValueError:  # binascii.Error included
        return json_reply(422, {"detail": "the signature is not base64"})
    message = _canonical(body["manifest"])
    candidates = [key_id for key_id in body["registered_key_ids"] if key_id in known_keys]
    for key_id in candidates:
        try:
            known_keys[key_id].verify(signature, message)
        except InvalidSignature:
            continue
        return verified(key_id, f"signature by {body['publisher']}/{key_id} is valid")
    return rejected(
        f"no key of {body['publisher']} known to the Kernel matches the signature "
        f"(tried: {', '.join(candidates) or 'none'})"
    )


class _Handler(BaseHTTPRequestHandler):
    server: "_TlsHttpServer"

    def do_POST(self) -> None:
        self._handle()

    def do_GET(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the server records what tests need; access lines would only clutter the output

    def _handle(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        assert isinstance(self.connection, ssl.SSLSocket)
        peer = x509.load_der_x509_certificate(self.connection.getpeercert(binary_form=True))
        request = ReceivedRequest(
            method=self.command,
            path=urlsplit(self.path).path,
            content_type=self.headers.get("Content-Type", ""),
            body=body,
            client_subject=peer.subject.rfc4514_string(),
            client_issuer=peer.issuer.rfc4514_string(),
        )
        reply, release = self.server.kernel._answer(request)
        if reply.delay and release.wait(reply.delay):
            return  # the test is over; nobody is waiting for this answer any more
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            for name, value in reply.headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(reply.body)
        except OSError:
            pass  # a client that timed out has closed the connection


class _TlsHttpServer(ThreadingHTTPServer):
    def __init__(
        self, address: tuple[str, int], kernel: KernelServer, context: ssl.SSLContext
    ) -> None:
        self.kernel = kernel
        self.ssl_context = context
        super().__init__(address, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The handshake runs here, in the connection's own thread rather than in accept(): a
        # client that stalls cannot hold up the others, and a refused handshake is recorded.
        assert isinstance(request, socket.socket)
        generation = self.kernel._connected()
        request.settimeout(HANDSHAKE_TIMEOUT_SECONDS)
        try:
            tls = self.ssl_context.wrap_socket(request, server_side=True)
        except OSError as exc:  # ssl.SSLError included
            self.kernel._refused(str(exc), generation)
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)
        except Exception:
            # A failure of the stand-in itself; the `kernel` fixture fails the test with it.
            self.kernel._failed(traceback.format_exc(), generation)
        finally:
            with contextlib.suppress(OSError):  # the client may have closed first
                tls.shutdown(socket.SHUT_WR)
            tls.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # finish_request records its own failures; this only keeps socketserver from printing
        # tracebacks of what it cannot attribute to a test.
        pass


# --- Fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def kernel_pki(tmp_path_factory: pytest.TempPathFactory) -> KernelPki:
    return kernel_pki_create(tmp_path_factory.mktemp("kernel-pki"))


@pytest.fixture(scope="session")
def kernel_server(kernel_pki: KernelPki) -> Iterator[KernelServer]:
    server = KernelServer(kernel_pki)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def kernel(kernel_server: KernelServer, settings: Any) -> Iterator[KernelServer]:
    """The Kernel stand-in, fresh for this test, with settings pointing at it."""
    kernel_server.reset()
    pki = kernel_server.pki
    settings.KERNEL_URL = kernel_server.url
    settings.KERNEL_CERT = str(pki.client.cert)
    settings.KERNEL_KEY = str(pki.client.key)
    settings.KERNEL_CA = str(pki.ca_cert)
    settings.KERNEL_TIMEOUT_SECONDS = 2.0
    yield kernel_server
    errors = kernel_server.errors
    kernel_server.reset()
    if errors:
        pytest.fail("the Kernel stand-in failed:\n" + "\n".join(errors), pytrace=False)
