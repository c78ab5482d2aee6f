"""Fuzzing every JSON endpoint: nested, huge, NUL, lone-surrogate, not-UTF-8 and random JSON
bodies are never a server error, every 4xx is a problem, and a 4xx writes nothing.

The endpoints come from the URL resolver, so a new one is fuzzed without being listed here:
every DRF view, with POST, PUT and PATCH (signed in as a buyer with a token from
`api_token_issue`); the plain views that read JSON (the Stripe webhook, signed with the
configured secret, and the local gateway's event page); and, for "never a 5xx" and "nothing
written", every other URL outside the admin.
"""

import hashlib
import hmac
import itertools
import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.apps import apps
from django.conf import settings as django_settings
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from rest_framework.views import APIView

from orders.models import WebhookEvent, WebhookStatus
from orders.services.webhooks import webhook_secrets
from tests.orders.factories import order_checked_out, sku_for_sale

pytestmark = pytest.mark.django_db

PROBLEM = "application/problem+json"
WRITE_METHODS = ("post", "put", "patch")
# Plain (non-DRF) views that read a JSON body, by URL name. Every DRF view is found on its own.
PLAIN_JSON_VIEWS = {"stripe-webhook", "local-checkout-event"}
# Known findings, by URL name, each with its reason: the answer is a problem by status and
# Content-Type, but its body is not JSON. Kept short; an entry is removed with its fix.
PROBLEM_BODY_NOT_JSON = {
    "api-schema": "drf-spectacular's schema view renders its errors with the negotiated "
    "renderer, YAML unless the client asks for JSON",
    "api-docs": "drf-spectacular's Swagger page renders its errors as text",
}
# The examples per endpoint and method: enough to meet every kind of body several times over,
# few enough for the suite's time budget (each is one request and a row count).
EXAMPLES_WHERE_A_BODY_IS_READ = 60
EXAMPLES_WHERE_IT_IS_NOT = 6


@dataclass(frozen=True)
class Route:
    route: str  # e.g. "api/v1/orders/<uuid:order_id>"
    name: str | None
    view: Any

    @property
    def drf(self) -> type[APIView] | None:
        cls = getattr(self.view, "cls", None)
        return cls if isinstance(cls, type) and issubclass(cls, APIView) else None


def _routes(patterns: list[Any], prefix: str = "") -> Iterator[Route]:
    for pattern in patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            if route.startswith("admin/"):
                continue  # HTML forms behind the admin's sign-in, not JSON
            yield from _routes(pattern.url_patterns, route)
        elif isinstance(pattern, URLPattern):
            yield Route(route, pattern.name, pattern.callback)


ROUTES = list(_routes(get_resolver().url_patterns))
JSON_ROUTES = [route for route in ROUTES if route.drf or route.name in PLAIN_JSON_VIEWS]
OTHER_ROUTES = [route for route in ROUTES if route not in JSON_ROUTES]


def _case_id(route: Route, method: str) -> str:
    return f"{method.upper()} /{route.route}"


JSON_CASES = [(route, method) for route in JSON_ROUTES for method in WRITE_METHODS]


def test_the_resolver_finds_the_json_endpoints():
    """A resolver walk that found nothing would fuzz nothing."""
    names = {route.name for route in JSON_ROUTES}
    assert {"checkout", "license-verify", "delivery-key", "stripe-webhook"} <= names
    assert names >= PLAIN_JSON_VIEWS
    assert all(re.search(r"[\^$(]", route.route) is None for route in JSON_ROUTES), (
        "a JSON endpoint behind re_path(): teach _url() its groups"
    )


# --- Bodies -------------------------------------------------------------------------------------

MAX_BYTES = 1024 * 1024  # the default of MARKETPLACE_JSON_MAX_BYTES, as production runs

_nasty_char = st.sampled_from(
    ["\x00", "\ud800", "\udbff", "\udc00", "\udfff", "\ud83d\ude00", "\u2028", "[", "{", '"', "\\"]
)
_strings = st.one_of(
    st.text(max_size=20),
    st.lists(_nasty_char | st.characters(), max_size=8).map("".join),
    st.characters(categories=["Cs"]),
    st.sampled_from(["", "evt_1", "charge.refunded", "pay", "sku-1", "a.b.c"]),
)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=False, allow_infinity=False),
    _strings,
)
_values = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(_strings, children, max_size=4)
    ),
    max_leaves=24,
)
# The names the endpoints read, so that bodies get past "unknown field" to the fields.
_FIELDS = ["sku", "token", "public_key", "id", "type", "livemode", "data", "outcome"]
_shaped = st.dictionaries(st.sampled_from(_FIELDS), _values, max_size=4)


@st.composite
def _encoded(draw: st.DrawFn, values: st.SearchStrategy[Any]) -> bytes:
    value = draw(values)
    text = json.dumps(
        value, ensure_ascii=draw(st.booleans()), indent=draw(st.sampled_from([None, 1]))
    )
    # surrogatepass: a lone surrogate written raw is bytes that are not UTF-8.
    return text.encode("utf-8", "surrogatepass")


@st.composite
def _nested(draw: st.DrawFn) -> bytes:
    # Around the default limit of 32, and far past it.
    depth = draw(st.sampled_from([31, 32, 33, 200, 5000, 100_000]) | st.integers(30, 3000))
    opener, closer = draw(
        st.sampled_from([(b"[", b"]"), (b'{"a":', b"}"), (b'[{"data":', b"}]"), (b'{"": [', b"]}")])
    )
    inner = draw(st.sampled_from([b"", b"1", b'"x"', b"[]", b"{}"]))
    body = opener * depth + inner + (closer * depth if draw(st.booleans()) else b"")
    if draw(st.booleans()):  # deep inside an otherwise plausible body
        body = b'{"id": "evt_deep", "type": "charge.refunded", "token": "t", "data": ' + body + b"}"
    return body


@st.composite
def _huge(draw: st.DrawFn) -> bytes:
    size = draw(st.sampled_from([MAX_BYTES - 1, MAX_BYTES, MAX_BYTES + 1, 3 * MAX_BYTES]))
    field = draw(st.sampled_from([b"token", b"sku", b"public_key", b"pad"]))
    head = b'{"' + field + b'": "'
    return head + b"x" * (size - len(head) - 2) + b'"}'


_bad_utf8 = st.sampled_from(
    [
        b"\xff",
        b"\xfe\xff",
        b"\xc0\xaf",
        b"\xed\xa0\x80",
        b"\xed\xbf\xbf",
        b"\xf4\x90\x80\x80",
        b"\x80",
    ]
)


@st.composite
def _spliced(draw: st.DrawFn) -> bytes:
    """A plausible body with bytes that are not UTF-8, a raw NUL or an escape spliced in."""
    body = bytearray(draw(_encoded(_shaped)))
    insert = draw(_bad_utf8 | st.sampled_from([b"\x00", b"\\u0000", b"\\ud800", b"\\", b'"']))
    at = draw(st.integers(min_value=0, max_value=len(body)))
    body[at:at] = insert
    return bytes(body)


BODIES = st.one_of(
    _encoded(_values),
    _encoded(_shaped),
    _nested(),
    _huge(),
    _spliced(),
    st.binary(max_size=64),
    st.sampled_from(
        [b"", b" ", b"null", b"NaN", b"[1e400]", b'{"a": 1, "a": 2}', b"\xef\xbb\xbf{}"]
    ),
)
# Mostly what a JSON client declares, so that most bodies reach the parser.
CONTENT_TYPES = st.sampled_from(
    [
        *["application/json"] * 6,
        "application/json; charset=utf-8",
        "application/json; charset=latin-1",
        "text/plain",
    ]
)


# --- Requests -----------------------------------------------------------------------------------

_keys = itertools.count()


def rows() -> dict[str, int]:
    return {model._meta.label: model.objects.count() for model in apps.get_models()}


NO_SESSION = "cs_local_" + "0" * 32


def _url(route: Route, session_id: str = NO_SESSION) -> str:
    def sample(match: re.Match[str]) -> str:
        converter, name = match.group(1) or "str", match.group(2)
        if name == "session_id":
            return session_id
        return {"uuid": str(uuid.uuid4()), "int": "1", "path": "x/y"}.get(converter, "fuzz")

    return "/" + re.sub(r"<(?:(\w+):)?(\w+)>", sample, route.route)


@pytest.fixture
def fuzz_client(buyer_token: str, settings: Any) -> Client:
    settings.STRIPE_WEBHOOK_SECRETS = ["whsec_fuzz_0123456789abcdef"]
    return Client(raise_request_exception=False, HTTP_AUTHORIZATION=f"Bearer {buyer_token}")


def _session_id(route: Route, buyer: Any) -> str:
    """A local checkout session of the buyer's where the route takes one (the gateway's event
    page reads its body only for a real session), made only then: publishing a SKU is slow."""
    if "<str:session_id>" not in route.route or route.name not in PLAIN_JSON_VIEWS:
        return NO_SESSION
    return order_checked_out(buyer, sku_for_sale()).checkout_session_id


def _send(client: Client, method: str, url: str, body: bytes, content_type: str) -> Any:
    headers = {"HTTP_IDEMPOTENCY_KEY": f"fuzz-{next(_keys)}"}
    if url == "/marketplace/stripe/webhook":
        timestamp = int(time.time())
        mac = hmac.new(
            webhook_secrets()[0].encode(), f"{timestamp}.".encode() + body, hashlib.sha256
        )
        headers["HTTP_STRIPE_SIGNATURE"] = f"t={timestamp},v1={mac.hexdigest()}"
    # generic(): the bytes as they are (post() re-encodes a body declared in another charset).
    return client.generic(method.upper(), url, data=body, content_type=content_type, **headers)


def _check(response: Any, before: dict[str, int], *, json_endpoint: bool, name: str | None) -> None:
    status = response.status_code
    assert status < 500, (status, response.content[:500])
    if not 400 <= status < 500:
        return
    after = rows()
    if json_endpoint:
        assert response["Content-Type"] == PROBLEM, (status, response.content[:200])
    if json_endpoint and name not in PROBLEM_BODY_NOT_JSON:
        problem = json.loads(response.content)
        assert problem["status"] == status
        assert all(problem.get(member) for member in ("type", "title", "detail")), problem
        if problem.get("code") == "webhook-body-invalid":
            # The one 4xx that writes, by design: a signed body that is not an event is kept,
            # as one rejected row, for the admin to read.
            assert after[WebhookEvent._meta.label] == before[WebhookEvent._meta.label] + 1
            assert WebhookEvent.objects.order_by("-pk").first().status == WebhookStatus.REJECTED
            before = {**before, WebhookEvent._meta.label: after[WebhookEvent._meta.label]}
    assert after == before, {label: (before[label], count) for label, count in after.items()}


def _code_of(response: Any) -> str:
    try:
        return str(json.loads(response.content).get("code", ""))
    except (ValueError, AttributeError):
        return ""


def _fuzz(client: Client, method: str, route: Route, url: str, examples: int) -> None:
    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        print_blob=True,
    )
    @given(body=BODIES, content_type=CONTENT_TYPES)
    # The findings this test has met, tried every run on every endpoint before random ones.
    @example(body=b"[" * 5000 + b"]" * 5000, content_type="application/json")
    @example(body=b'{"\\ud800": 1}', content_type="application/json")
    @example(body=b'{"id": "evt_\\ud800", "type": "charge.refunded"}', content_type="text/plain")
    @example(body=b'{"outcome": [], "sku": {}, "token": []}', content_type="application/json")
    @example(body=b'{"id": "evt_1", "type": "x", "a": NaN}', content_type="application/json")
    def one(body: bytes, content_type: str) -> None:
        before = rows()
        response = _send(client, method, url, body, content_type)
        # --hypothesis-show-statistics lists how often each answer was met.
        event(f"{response.status_code} {_code_of(response)}")
        _check(response, before, json_endpoint=True, name=route.name)

    one()


@pytest.mark.parametrize(
    ("route", "method"), JSON_CASES, ids=[_case_id(route, method) for route, method in JSON_CASES]
)
def test_a_json_endpoint_answers_any_body_with_a_4xx_problem_or_success(
    fuzz_client: Client, buyer: Any, route: Route, method: str
):
    client = fuzz_client
    session_id = _session_id(route, buyer) if method == "post" else NO_SESSION
    reads_a_body = (
        hasattr(route.drf, method) if route.drf else method == "post"  # the plain ones: POST
    )
    examples = EXAMPLES_WHERE_A_BODY_IS_READ if reads_a_body else EXAMPLES_WHERE_IT_IS_NOT
    _fuzz(client, method, route, _url(route, session_id), examples)


PATHOLOGICAL = {
    "deep": b"[" * 100_000,
    "huge": b'{"pad": "' + b"x" * (2 * MAX_BYTES) + b'"}',
    "nul": b'{"a": "\\u0000", "\\u0000": 1}',
    "lone-surrogate": b'{"\\ud800": "\\udfff"}',
    "not-utf8": b'{"a": "\xed\xa0\x80\xff"}',
}


@pytest.mark.parametrize("body", list(PATHOLOGICAL))
@pytest.mark.parametrize("method", WRITE_METHODS)
def test_no_other_url_meets_a_bad_body_with_a_server_error_or_a_write(
    fuzz_client: Client, method: str, body: str
):
    for route in OTHER_ROUTES:
        before = rows()
        response = _send(fuzz_client, method, _url(route), PATHOLOGICAL[body], "application/json")
        assert response.status_code < 500, (route.route, response.status_code)
        _check(response, before, json_endpoint=False, name=route.name)


def test_the_fuzzed_limits_are_the_defaults():
    """The bodies above are sized for the default limit; the suite runs with it."""
    assert django_settings.JSON_MAX_BYTES == MAX_BYTES
