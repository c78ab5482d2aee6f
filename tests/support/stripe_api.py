"""A stand-in for Stripe's API: a plain HTTP server on loopback that speaks the parts of it the
platform uses, so the real `stripe` client can be pointed at it (MARKETPLACE_STRIPE_API_BASE).

It speaks like Stripe: requests are form-encoded with bracket keys
(`line_items[0][price_data][unit_amount]=1999`, `metadata[order_id]=...`), answers are JSON
objects built from Stripe's own example objects (tests/fixtures/stripe), errors are
`{"error": {"type", "message", "code", "param"}}` with Stripe's statuses, and:
- `Authorization: Bearer <secret key>` is required (401 otherwise);
- an `Idempotency-Key` seen before answers the stored response again (header
  `Idempotent-Replayed: true`) without creating a second object; the same key with other
  parameters or on another endpoint is a 400 `idempotency_error`, and one still in flight a 409.
  Answers that never reached an endpoint (injected failures, 401) are not stored, as on Stripe.

Endpoints:
- `POST /v1/checkout/sessions` creates a session (`cs_test_...`, status `open`, payment_status
  `unpaid`) and its PaymentIntent (`pi_...`, metadata from `payment_intent_data[metadata]`);
- `GET /v1/checkout/sessions/{id}`, `GET /v1/payment_intents/{id}`, `GET /v1/refunds/{id}`;
- `POST /v1/refunds` (`payment_intent`, optional `amount`): refuses an intent that has not been
  paid, and an amount beyond what is left to refund, with a 400.

Controls for tests: `fail_next(n, status=503)`, `down = True` (503 to everything),
`delay_seconds`, `pay(session_id)` (what a buyer completing the page does: the session becomes
`complete`/`paid` and its intent `succeeded`), `payment_intent_add(...)` (an intent made
elsewhere), and what it saw: `requests`, `sessions`, `payment_intents`, `refunds`.

Fixture `stripe_api` (per test): a fresh server with settings.STRIPE_SECRET_KEY,
STRIPE_API_BASE, STRIPE_WEBHOOK_SECRETS and a short STRIPE_TIMEOUT_SECONDS pointing at it.
Standalone (the checkout benchmark): `python -m tests.support.stripe_api --port N
--secret-key K` serves in the foreground until interrupted.
"""

import argparse
import base64
import copy
import json
import re
import secrets
import signal
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "stripe"
CHECKOUT_PAGE_BASE = "https://checkout.stripe.com/c/pay/"
SESSION_LIFETIME_SECONDS = 24 * 3600

# Top-level parameters Stripe accepts on these endpoints (a subset of its API reference large
# enough for any sensible client); anything else is "Received unknown parameter", as on Stripe.
SESSION_PARAMS = frozenset(
    {
        "adaptive_pricing", "after_expiration", "allow_promotion_codes", "automatic_tax",
        "billing_address_collection", "cancel_url", "client_reference_id",
        "consent_collection", "currency", "custom_fields", "custom_text", "customer",
        "customer_creation", "customer_email", "customer_update", "discounts", "expand",
        "expires_at", "invoice_creation", "line_items", "locale", "metadata", "mode",
        "optional_items", "payment_intent_data", "payment_method_collection",
        "payment_method_configuration", "payment_method_data", "payment_method_options",
        "payment_method_types", "permissions", "phone_number_collection",
        "redirect_on_completion", "return_url", "saved_payment_method_options",
        "setup_intent_data", "shipping_address_collection", "shipping_options", "submit_type",
        "subscription_data", "success_url", "tax_id_collection", "ui_mode",
    }
)  # fmt: skip
REFUND_PARAMS = frozenset(
    {
        "amount", "charge", "currency", "customer", "expand", "instructions_email", "metadata",
        "origin", "payment_intent", "reason", "refund_application_fee", "reverse_transfer",
    }
)  # fmt: skip
REFUND_REASONS = frozenset({"duplicate", "fraudulent", "requested_by_customer"})


def stripe_fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def _random_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


# --- Stripe's form encoding --------------------------------------------------------------------

_KEY_PART = re.compile(r"\[([^\]]*)\]")


def parse_stripe_form(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """`a[b][0][c]=v` pairs into nested dicts and lists, as Stripe reads them. Values stay
    strings (Stripe converts per parameter); `a[]=v` appends to a list."""
    root: dict[str, Any] = {}
    for raw_key, value in pairs:
        head, _, rest = raw_key.partition("[")
        path = [head, *(_KEY_PART.findall("[" + rest) if rest else [])]
        node: Any = root
        for index, part in enumerate(path):
            last = index == len(path) - 1
            if part == "":  # a[]=v
                node.setdefault("", []).append(value if last else {})
                break
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
    return _lists_from_indexed(root)


def _lists_from_indexed(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    if set(node) == {""}:
        return [_lists_from_indexed(item) for item in node[""]]
    converted = {key: _lists_from_indexed(value) for key, value in node.items()}
    if converted and all(key.isdigit() for key in converted):
        return [converted[key] for key in sorted(converted, key=int)]
    return converted


# --- Errors ------------------------------------------------------------------------------------


class StripeError(Exception):
    """An answer with Stripe's error body."""

    TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 402: "card_error"}

    def __init__(
        self, status: int, message: str, *, code: str = "", param: str = "", type_: str = ""
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {
            "error": {
                "type": type_ or self._type_for(status),
                "message": message,
                **({"code": code} if code else {}),
                **({"param": param} if param else {}),
            }
        }

    @classmethod
    def _type_for(cls, status: int) -> str:
        if status == 409:
            return "idempotency_error"
        if status == 429:
            return "rate_limit_error"
        if status >= 500:
            return "api_error"
        return cls.TYPES.get(status, "invalid_request_error")


def _missing(param: str) -> StripeError:
    return StripeError(
        400, f"Missing required param: {param}.", code="parameter_missing", param=param
    )


def _integer(params: dict[str, Any], name: str, *, required: bool = True) -> int | None:
    value = params.get(name)
    if value is None:
        if required:
            raise _missing(name)
        return None
    if not isinstance(value, str) or not re.fullmatch(r"-?\d+", value):
        raise StripeError(
            400, f"Invalid integer: {value}", code="parameter_invalid_integer", param=name
        )
    return int(value)


def _unknown_params(params: dict[str, Any], known: frozenset[str]) -> None:
    for name in params:
        if name not in known:
            raise StripeError(
                400, f"Received unknown parameter: {name}", code="parameter_unknown", param=name
            )


# --- Records -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StripeRequest:
    """One request as the stand-in received it. Header names are lower-case."""

    method: str
    path: str
    params: dict[str, Any]
    headers: dict[str, str]
    status: int = 0  # what it was answered
    replayed: bool = False

    @property
    def idempotency_key(self) -> str | None:
        return self.headers.get("idempotency-key")


@dataclass
class _Stored:
    method: str
    path: str
    params: dict[str, Any]
    status: int = 0
    body: bytes = b""
    done: bool = False


@dataclass
class _State:
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    payment_intents: dict[str, dict[str, Any]] = field(default_factory=dict)
    refunds: dict[str, dict[str, Any]] = field(default_factory=dict)
    idempotent: dict[str, _Stored] = field(default_factory=dict)
    requests: list[StripeRequest] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


# --- Server ------------------------------------------------------------------------------------


class StripeApiServer:
    def __init__(
        self,
        *,
        secret_key: str | None = None,
        webhook_secret: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.secret_key = secret_key or f"sk_test_{secrets.token_hex(12)}"
        self.webhook_secret = webhook_secret or f"whsec_test_{secrets.token_hex(16)}"
        self.down = False
        self.delay_seconds = 0.0
        self._lock = threading.Lock()
        self._state = _State()
        self._failures: list[int] = []
        self._stopping = threading.Event()
        self._templates = {
            name: stripe_fixture(name) for name in ("checkout.session", "payment_intent", "refund")
        }
        self._http = _HttpServer((host, port), self)
        self._thread = threading.Thread(
            target=self._http.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="stripe-api-stand-in",
            daemon=True,
        )

    # Lifecycle

    @property
    def port(self) -> int:
        return self._http.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "StripeApiServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # releases delayed answers
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(timeout=5)

    def serve_forever(self) -> None:
        self._http.serve_forever(poll_interval=0.2)

    # Controls

    def fail_next(self, n: int = 1, *, status: int = 503) -> None:
        """The next `n` requests, whatever they are, get `status` with Stripe's error body."""
        with self._lock:
            self._failures.extend([status] * n)

    def pay(self, session_id: str) -> dict[str, Any]:
        """The buyer completed the payment page: the session becomes complete and paid, its
        intent succeeded with a charge. Answers the session as Stripe would now show it."""
        with self._lock:
            session = self._state.sessions[session_id]
            session.update(status="complete", payment_status="paid")
            intent = self._state.payment_intents[session["payment_intent"]]
            intent.update(
                status="succeeded",
                amount_received=intent["amount"],
                latest_charge=intent["latest_charge"] or _random_id("ch"),
            )
            return copy.deepcopy(session)

    def payment_intent_add(
        self,
        intent_id: str | None = None,
        *,
        amount: int,
        currency: str = "usd",
        metadata: dict[str, str] | None = None,
        status: str = "succeeded",
    ) -> dict[str, Any]:
        """An intent Stripe knows without a session here (say, one named in a test's event)."""
        intent = self._payment_intent(
            intent_id or _random_id("pi"), amount=amount, currency=currency, metadata=metadata
        )
        if status == "succeeded":
            intent.update(status=status, amount_received=amount, latest_charge=_random_id("ch"))
        else:
            intent["status"] = status
        with self._lock:
            self._state.payment_intents[intent["id"]] = intent
            return copy.deepcopy(intent)

    def reset(self) -> None:
        with self._lock:
            self._state = _State()
            self._failures.clear()
        self.down = False
        self.delay_seconds = 0.0

    # What it saw (snapshots, safe to read while it serves)

    @property
    def requests(self) -> list[StripeRequest]:
        with self._lock:
            return list(self._state.requests)

    @property
    def sessions(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._state.sessions)

    @property
    def payment_intents(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._state.payment_intents)

    @property
    def refunds(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._state.refunds)

    @property
    def errors(self) -> list[str]:
        """Failures of the stand-in itself (a bug here, not an answer to the client)."""
        with self._lock:
            return list(self._state.errors)

    # Answering

    def answer(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, bytes, dict[str, str]]:
        split = urlsplit(target)
        path = split.path.rstrip("/")
        content_type = headers.get("content-type", "")
        pairs = parse_qsl(split.query, keep_blank_values=True)
        if body and "application/x-www-form-urlencoded" in content_type:
            pairs += parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
        params = parse_stripe_form(pairs)
        request_id = _random_id("req")
        status, payload, replayed = self._answer(method, path, params, headers)
        with self._lock:
            self._state.requests.append(
                StripeRequest(method, path, params, headers, status=status, replayed=replayed)
            )
        reply_headers = {"Request-Id": request_id}
        if replayed:
            reply_headers["Idempotent-Replayed"] = "true"
        return status, payload, reply_headers

    def _answer(
        self, method: str, path: str, params: dict[str, Any], headers: dict[str, str]
    ) -> tuple[int, bytes, bool]:
        if self.delay_seconds and self._stopping.wait(self.delay_seconds):
            return 503, b"", False
        with self._lock:
            injected = self._failures.pop(0) if self._failures else None
        if self.down or injected is not None:
            error = StripeError(
                injected or 503, "The stand-in is told to fail this request.", code="test_failure"
            )
            return error.status, _json(error.body), False
        if not self._authorized(headers.get("authorization", "")):
            error = StripeError(401, "Invalid API Key provided.", code="api_key_invalid")
            return 401, _json(error.body), False

        key = headers.get("idempotency-key")
        if key and method == "POST":
            with self._lock:
                stored = self._state.idempotent.get(key)
                if stored is None:
                    stored = self._state.idempotent[key] = _Stored(method, path, params)
                    fresh = True
                else:
                    fresh = False
            if not fresh:
                return self._replay(stored, method, path, params)
            status, payload = self._route(method, path, params)
            with self._lock:
                if status >= 400:
                    # Stripe keeps no result for a request that failed validation or never ran:
                    # a retry with the key runs again.
                    del self._state.idempotent[key]
                else:
                    stored.status, stored.body, stored.done = status, payload, True
            return status, payload, False
        status, payload = self._route(method, path, params)
        return status, payload, False

    def _replay(
        self, stored: _Stored, method: str, path: str, params: dict[str, Any]
    ) -> tuple[int, bytes, bool]:
        if (stored.method, stored.path) != (method, path) or stored.params != params:
            error = StripeError(
                400,
                "Keys for idempotent requests can only be used with the same parameters they "
                "were first used with. Try using a key other than the one used for the "
                "original request.",
                type_="idempotency_error",
            )
            return 400, _json(error.body), False
        if not stored.done:
            error = StripeError(
                409,
                "There is currently another in-progress request using this Idempotent Key "
                "(that probably means you submitted twice, and the other request is still "
                "going through). Please retry in a moment.",
                code="idempotency_key_in_use",
            )
            return 409, _json(error.body), False
        return stored.status, stored.body, True

    def _authorized(self, authorization: str) -> bool:
        scheme, _, credential = authorization.partition(" ")
        if scheme.lower() == "basic":  # Stripe also takes the key as the Basic user name
            try:
                credential = base64.b64decode(credential).decode().partition(":")[0]
            except ValueError:
                return False
        elif scheme.lower() != "bearer":
            return False
        return secrets.compare_digest(credential.encode(), self.secret_key.encode())

    def _route(self, method: str, path: str, params: dict[str, Any]) -> tuple[int, bytes]:
        try:
            if path == "/v1/checkout/sessions" and method == "POST":
                return 200, _json(self._session_create(params))
            for prefix, store in (
                ("/v1/checkout/sessions/", "sessions"),
                ("/v1/payment_intents/", "payment_intents"),
                ("/v1/refunds/", "refunds"),
            ):
                if path.startswith(prefix) and method == "GET":
                    return 200, _json(self._retrieve(store, path.removeprefix(prefix)))
            if path == "/v1/refunds" and method == "POST":
                return 200, _json(self._refund_create(params))
            raise StripeError(
                404,
                f"Unrecognized request URL ({method}: {path}). Please see "
                "https://stripe.com/docs or we can help at https://support.stripe.com/.",
            )
        except StripeError as exc:
            return exc.status, _json(exc.body)

    def _retrieve(self, store: str, object_id: str) -> dict[str, Any]:
        with self._lock:
            found = getattr(self._state, store).get(object_id)
            if found is None:
                kind = {"sessions": "checkout.session", "payment_intents": "payment_intent"}
                raise StripeError(
                    404,
                    f"No such {kind.get(store, 'refund')}: '{object_id}'",
                    code="resource_missing",
                    param="id",
                )
            return copy.deepcopy(found)

    def _payment_intent(
        self, intent_id: str, *, amount: int, currency: str, metadata: dict[str, str] | None
    ) -> dict[str, Any]:
        intent = copy.deepcopy(self._templates["payment_intent"])
        intent.update(
            id=intent_id,
            amount=amount,
            amount_capturable=0,
            amount_received=0,
            currency=currency,
            metadata=dict(metadata or {}),
            status="requires_payment_method",
            latest_charge=None,
            client_secret=f"{intent_id}_secret_{secrets.token_hex(8)}",
            created=int(time.time()),
            livemode=False,
        )
        return intent

    def _session_create(self, params: dict[str, Any]) -> dict[str, Any]:
        _unknown_params(params, SESSION_PARAMS)
        mode = params.get("mode")
        if mode is None:
            raise _missing("mode")
        if mode not in ("payment", "setup", "subscription"):
            raise StripeError(400, f"Invalid mode: {mode}", code="parameter_invalid", param="mode")
        if mode != "payment":
            raise StripeError(400, "The stand-in only speaks mode=payment.", param="mode")
        if not params.get("success_url"):
            raise _missing("success_url")
        line_items = params.get("line_items")
        if not isinstance(line_items, list) or not line_items:
            raise _missing("line_items")
        amount_total, currencies = 0, set()
        for index, item in enumerate(line_items):
            prefix = f"line_items[{index}]"
            price_data = item.get("price_data") if isinstance(item, dict) else None
            if not isinstance(price_data, dict):
                raise _missing(f"{prefix}[price_data]")
            unit_amount = _integer(price_data, "unit_amount") or 0
            quantity = _integer(item, "quantity") or 0
            if unit_amount < 0 or quantity < 1:
                raise StripeError(400, "Invalid amount or quantity.", param=prefix)
            currency = price_data.get("currency")
            if not isinstance(currency, str) or not re.fullmatch(r"[a-z]{3}", currency):
                raise StripeError(
                    400, f"Invalid currency: {currency}", param=f"{prefix}[price_data][currency]"
                )
            product = price_data.get("product_data")
            if not (isinstance(product, dict) and product.get("name")):
                raise _missing(f"{prefix}[price_data][product_data][name]")
            amount_total += unit_amount * quantity
            currencies.add(currency)
        if len(currencies) != 1:
            raise StripeError(400, "All line items must share one currency.", param="line_items")
        currency = currencies.pop()
        metadata = params.get("metadata") or {}
        intent_data = params.get("payment_intent_data") or {}
        if not isinstance(metadata, dict) or not isinstance(intent_data, dict):
            raise StripeError(400, "Invalid object", param="metadata")

        session_id = f"cs_test_{secrets.token_hex(24)}"
        intent = self._payment_intent(
            _random_id("pi"),
            amount=amount_total,
            currency=currency,
            metadata=intent_data.get("metadata") or {},
        )
        now = int(time.time())
        session = copy.deepcopy(self._templates["checkout.session"])
        session.update(
            id=session_id,
            object="checkout.session",
            url=CHECKOUT_PAGE_BASE + session_id,
            mode=mode,
            status="open",
            payment_status="unpaid",
            amount_total=amount_total,
            amount_subtotal=amount_total,
            currency=currency,
            client_reference_id=params.get("client_reference_id"),
            customer_email=params.get("customer_email"),
            metadata=dict(metadata),
            payment_intent=intent["id"],
            success_url=params.get("success_url"),
            cancel_url=params.get("cancel_url"),
            created=now,
            expires_at=now + SESSION_LIFETIME_SECONDS,
            livemode=False,
        )
        with self._lock:
            self._state.payment_intents[intent["id"]] = intent
            self._state.sessions[session_id] = session
            return copy.deepcopy(session)

    def _refund_create(self, params: dict[str, Any]) -> dict[str, Any]:
        _unknown_params(params, REFUND_PARAMS)
        intent_id = params.get("payment_intent")
        if not intent_id:
            raise _missing("payment_intent")  # the platform never refunds by charge
        amount = _integer(params, "amount", required=False)
        reason = params.get("reason")
        if reason is not None and reason not in REFUND_REASONS:
            raise StripeError(
                400, f"Invalid reason: {reason}", code="parameter_invalid", param="reason"
            )
        with self._lock:
            intent = self._state.payment_intents.get(intent_id)
            if intent is None:
                raise StripeError(
                    400,
                    f"No such payment_intent: '{intent_id}'",
                    code="resource_missing",
                    param="payment_intent",
                )
            if intent["status"] != "succeeded":
                raise StripeError(
                    400,
                    f"This PaymentIntent ({intent_id}) does not have a successful charge to "
                    "refund.",
                    code="charge_not_found",
                    param="payment_intent",
                )
            refunded = sum(
                refund["amount"]
                for refund in self._state.refunds.values()
                if refund["payment_intent"] == intent_id
            )
            left = intent["amount_received"] - refunded
            if left <= 0:
                raise StripeError(
                    400,
                    f"Charge {intent['latest_charge']} has already been refunded.",
                    code="charge_already_refunded",
                )
            if amount is None:
                amount = left
            if amount <= 0:
                raise StripeError(
                    400,
                    "Refund amount must be positive.",
                    param="amount",
                    code="parameter_invalid_integer",
                )
            if amount > left:
                raise StripeError(
                    400,
                    f"Refund amount ({amount}) is greater than unrefunded amount on charge "
                    f"({left})",
                    code="amount_too_large",
                    param="amount",
                )
            refund = copy.deepcopy(self._templates["refund"])
            refund.update(
                id=_random_id("re"),
                amount=amount,
                currency=intent["currency"],
                charge=intent["latest_charge"],
                payment_intent=intent_id,
                reason=reason,
                metadata=dict(params.get("metadata") or {}),
                status="succeeded",
                created=int(time.time()),
            )
            self._state.refunds[refund["id"]] = refund
            return copy.deepcopy(refund)

    def _failed(self, error: str) -> None:
        with self._lock:
            self._state.errors.append(error)


def _json(document: Any) -> bytes:
    return json.dumps(document).encode()


class _Handler(BaseHTTPRequestHandler):
    server: "_HttpServer"
    protocol_version = "HTTP/1.1"  # keep-alive, as the stripe client's requests session expects
    disable_nagle_algorithm = True  # headers and body go out at once, no 40 ms delayed-ACK stall

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # `requests` records what tests need

    def _handle(self) -> None:
        stand_in = self.server.stand_in
        try:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {name.lower(): value for name, value in self.headers.items()}
            status, payload, extra = stand_in.answer(self.command, self.path, headers, body)
        except Exception:
            stand_in._failed(traceback.format_exc())
            status, payload, extra = 500, _json(StripeError(500, "stand-in failure").body), {}
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in extra.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            pass  # the client gave up (a timeout test)


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the checkout benchmark opens many connections at once

    def __init__(self, address: tuple[str, int], stand_in: StripeApiServer) -> None:
        self.stand_in = stand_in
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # connection resets from clients that timed out are not the stand-in's failures


# --- Fixture -----------------------------------------------------------------------------------


@pytest.fixture
def stripe_api(settings: Any) -> Iterator[StripeApiServer]:
    """A fresh Stripe stand-in for this test, with the platform's Stripe settings pointing at it
    (so get_gateway() answers the real StripeGateway)."""
    server = StripeApiServer().start()
    settings.STRIPE_SECRET_KEY = server.secret_key
    settings.STRIPE_API_BASE = server.url
    settings.STRIPE_WEBHOOK_SECRETS = [server.webhook_secret]
    # Short enough that a test of a slow Stripe is quick, long enough for a loaded CI machine.
    settings.STRIPE_TIMEOUT_SECONDS = 2.0
    try:
        yield server
    finally:
        server.stop()
    if server.errors:
        pytest.fail("the Stripe stand-in failed:\n" + "\n".join(server.errors), pytrace=False)


# --- Standalone --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the Stripe API stand-in on loopback.")
    parser.add_argument("--port", type=int, default=12111)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--secret-key", default="sk_test_stand_in")
    parser.add_argument("--webhook-secret", default=None)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    args = parser.parse_args(argv)
    server = StripeApiServer(
        secret_key=args.secret_key,
        webhook_secret=args.webhook_secret,
        host=args.host,
        port=args.port,
    )
    server.delay_seconds = args.delay

    def stop(signum: int, frame: Any) -> None:
        # shutdown() waits for serve_forever, which runs in this very thread: ask from another.
        threading.Thread(target=server._http.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"Stripe stand-in listening on http://{args.host}:{server.port}", flush=True)
    server.serve_forever()
    server._http.server_close()


if __name__ == "__main__":
    main()
