"""A stand-in for the signing proxy: a plain HTTP server on loopback that holds real private
keys and speaks the API documented in marketplace/keystore/__init__.py, so the real client
(ProxyBackend, `requests`) is tested against a real socket.

    POST /v1/keys                 Authorization: Bearer <token> (401 otherwise)
                                  {"kid", "purpose"} -> 201 {"key_ref", "alg", "public_jwk"};
                                  a kid it already made: 200 with the same key
    POST /v1/keys/{key_ref}/sign  {"message": base64url} -> 200 {"signature": base64url}
                                  (JOSE form: ES256 is r || s); unknown key_ref: 404

What a test controls:
- `algorithm`: what new keys are, "ES256" (P-256, the default) or "EdDSA" (Ed25519).
- `down = True`: every request answers 503 until it is set back to False.
- `delay`: every answer is held back that many seconds (a client's timeout).
- `wrong_signatures = True`: signatures are made with another key (a proxy that does not
  sign with the key it published).
- `requests` (every request answered, headers included), `keys` (key_ref -> algorithm).

Fixture `signing_proxy`: a fresh server for one test, with the platform's key store pointed
at it (MARKETPLACE_KEYSTORE_BACKEND=proxy, endpoint, token, a short timeout).
"""

import json
import secrets
import threading
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from marketplace.jwk import ES256, PublicKey, b64url, b64url_decode, es256_signature_from_der

DEFAULT_TOKEN = "signing-proxy-test-token"

PrivateKey = Ed25519PrivateKey | ec.EllipticCurvePrivateKey


def _sign(private_key: PrivateKey, message: bytes) -> bytes:
    if isinstance(private_key, Ed25519PrivateKey):
        return private_key.sign(message)
    return es256_signature_from_der(private_key.sign(message, ec.ECDSA(hashes.SHA256())))


@dataclass(frozen=True)
class ProxyRequest:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: Any  # parsed JSON, or None
    status: int  # what the stand-in answered


@dataclass(frozen=True)
class _Key:
    ref: str
    kid: str
    algorithm: str
    private_key: PrivateKey

    def public_jwk(self) -> dict[str, Any]:
        return PublicKey(self.kid, self.algorithm, self.private_key.public_key()).jwk()


class SigningProxy:
    def __init__(self, *, token: str = DEFAULT_TOKEN) -> None:
        self.token = token
        self.algorithm = ES256
        self.down = False
        self.delay = 0.0
        self.wrong_signatures = False
        self._lock = threading.Lock()
        self._keys: dict[str, _Key] = {}
        self._requests: list[ProxyRequest] = []
        self._errors: list[str] = []
        self._release = threading.Event()
        self._http = _ProxyHttpServer(("127.0.0.1", 0), self)
        self._thread = threading.Thread(
            target=self._http.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="signing-proxy-test-server",
            daemon=True,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._http.server_address[1]}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._release.set()
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(timeout=5)

    @property
    def requests(self) -> list[ProxyRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def keys(self) -> dict[str, str]:
        with self._lock:
            return {ref: key.algorithm for ref, key in self._keys.items()}

    @property
    def errors(self) -> list[str]:
        with self._lock:
            return list(self._errors)

    # Answering (called from the connection threads).

    def _answer(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> Any:
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        with self._lock:
            status, document = self._decide(method, path, headers, body)
            self._requests.append(ProxyRequest(method, path, headers, body, status))
        return status, document, self._release

    def _decide(
        self, method: str, path: str, headers: dict[str, str], body: Any
    ) -> tuple[int, dict[str, Any]]:
        if self.down:
            return 503, {"detail": "the signing service is down for maintenance"}
        if headers.get("authorization") != f"Bearer {self.token}":
            return 401, {"detail": "a valid bearer token is required"}
        if method != "POST":
            return 405, {"detail": f"{method} is not allowed"}
        if not isinstance(body, dict):
            return 400, {"detail": "the body must be a JSON object"}
        parts = path.strip("/").split("/")
        if parts == ["v1", "keys"]:
            return self._create(body)
        if len(parts) == 4 and parts[:2] == ["v1", "keys"] and parts[3] == "sign":
            return self._sign(parts[2], body)
        return 404, {"detail": f"no such resource {path}"}

    def _create(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        kid = body.get("kid")
        if not isinstance(kid, str) or not kid:
            return 422, {"detail": "kid is required"}
        for key in self._keys.values():
            if key.kid == kid:  # a retried request: the same key, not a second one
                return 200, self._describe(key)
        private_key: PrivateKey = (
            ec.generate_private_key(ec.SECP256R1())
            if self.algorithm == ES256
            else Ed25519PrivateKey.generate()
        )
        key = _Key("kr_" + secrets.token_hex(8), kid, self.algorithm, private_key)
        self._keys[key.ref] = key
        return 201, self._describe(key)

    @staticmethod
    def _describe(key: _Key) -> dict[str, Any]:
        return {"key_ref": key.ref, "alg": key.algorithm, "public_jwk": key.public_jwk()}

    def _sign(self, ref: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        key = self._keys.get(ref)
        if key is None:
            return 404, {"detail": f"no key {ref}"}
        try:
            message = b64url_decode(str(body.get("message", "")))
        except ValueError:
            return 422, {"detail": "message must be base64url"}
        private_key = key.private_key
        if self.wrong_signatures:
            private_key = (
                ec.generate_private_key(ec.SECP256R1())
                if key.algorithm == ES256
                else Ed25519PrivateKey.generate()
            )
        return 200, {"signature": b64url(_sign(private_key, message))}

    def _failed(self, error: str) -> None:
        with self._lock:
            self._errors.append(error)


class _Handler(BaseHTTPRequestHandler):
    server: "_ProxyHttpServer"

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the server records what tests need

    def _handle(self) -> None:
        proxy = self.server.proxy
        try:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {name.lower(): value for name, value in self.headers.items()}
            status, document, release = proxy._answer(self.command, self.path, headers, raw)
        except Exception:
            proxy._failed(traceback.format_exc())
            status, document, release = 500, {"detail": "the stand-in failed"}, threading.Event()
        if proxy.delay and release.wait(proxy.delay):
            return  # the server is stopping; nobody waits for this answer any more
        body = json.dumps(document).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass  # a client that timed out has gone


class _ProxyHttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], proxy: SigningProxy) -> None:
        self.proxy = proxy
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client hanging up early is not the test's concern


@pytest.fixture
def signing_proxy(settings: Any) -> Iterator[SigningProxy]:
    """A fresh signing proxy for this test; license keys are made and used there."""
    proxy = SigningProxy()
    proxy.start()
    settings.KEYSTORE_BACKEND = "proxy"
    settings.SIGNING_ENDPOINT = proxy.url
    settings.SIGNING_TOKEN = proxy.token
    settings.KEYSTORE_TIMEOUT_SECONDS = 1.0
    try:
        yield proxy
    finally:
        errors = proxy.errors
        proxy.stop()
    if errors:
        pytest.fail("the signing proxy stand-in failed:\n" + "\n".join(errors), pytrace=False)
