"""Every JSON body the API takes is read within limits (marketplace/api/parsers.py): deep
nesting, size, NUL, lone surrogates, bytes that are not UTF-8 and duplicate names are each a
4xx problem that names what was wrong, and nothing is written."""

import json
from typing import Any

import pytest
from django.apps import apps
from hypothesis import given, settings
from hypothesis import strategies as st
from rest_framework.test import APIClient

from marketplace.api.parsers import json_depth_exceeds

pytestmark = pytest.mark.django_db

PROBLEM = "application/problem+json"
MIB = 1024 * 1024

# (method, path): the unauthenticated license check and two buyer writes.
VERIFY = ("post", "/api/v1/licenses/verify")
CHECKOUT = ("post", "/api/v1/checkout")
DELIVERY_KEY = ("put", "/api/v1/me/delivery-key")
ENDPOINTS = [VERIFY, CHECKOUT, DELIVERY_KEY]
ENDPOINT_IDS = ["verify", "checkout", "delivery-key"]


@pytest.fixture
def client(buyer_token: str) -> APIClient:
    # A server error is answered (and asserted on) rather than raised into the test.
    client = APIClient(raise_request_exception=False)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {buyer_token}", HTTP_IDEMPOTENCY_KEY="key-1")
    return client


def send(
    client: APIClient,
    endpoint: tuple[str, str],
    body: bytes,
    content_type: str = "application/json",
) -> Any:
    method, path = endpoint
    return getattr(client, method)(path, data=body, content_type=content_type)


def rows() -> dict[str, int]:
    return {model._meta.label: model.objects.count() for model in apps.get_models()}


def refused(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"] == PROBLEM
    problem = response.json()
    assert (problem["status"], problem["code"]) == (status, code), problem
    assert problem["type"] == f"urn:marketplace:problem:{code}"
    return problem


# --- Nesting ------------------------------------------------------------------------------------

DEEP = {
    "arrays": b"[" * 5000 + b"]" * 5000,
    "objects": b'{"a":' * 3000 + b"1" + b"}" * 3000,
    "unclosed": b"[" * 100_000,
    "inside-a-field": b'{"sku": ' + b"[" * 100 + b"]" * 100 + b', "token": "x"}',
    "mixed": b'[{"a": [' * 1000 + b"]}]" * 1000,
}


@pytest.mark.parametrize("shape", list(DEEP))
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=ENDPOINT_IDS)
def test_deep_json_is_a_400_naming_the_limit(
    client: APIClient, endpoint: tuple[str, str], shape: str
):
    before = rows()

    problem = refused(send(client, endpoint, DEEP[shape]), 400, "json-too-deep")

    assert problem["max_depth"] == 32
    assert "deeper than 32 levels" in problem["detail"]
    assert rows() == before


def test_nesting_up_to_the_limit_is_read_and_one_more_level_is_refused(
    client: APIClient, settings: Any
):
    settings.JSON_MAX_DEPTH = 5
    # The object is one level, the arrays inside it the other four.
    at_limit = b'{"sku": [[[[]]]]}'
    over = b'{"sku": [[[[[]]]]]}'

    problem = refused(send(client, CHECKOUT, at_limit), 400, "invalid-input")
    assert "sku" in problem["errors"]
    problem = refused(send(client, CHECKOUT, over), 400, "json-too-deep")
    assert problem["max_depth"] == 5


def test_brackets_inside_strings_are_text_not_nesting(client: APIClient):
    token = '[{"\\' * 5000  # brackets, quotes and backslashes, escaped in the JSON
    response = send(client, VERIFY, json.dumps({"token": token}).encode())

    assert response.status_code == 200, response.content[:300]
    assert response.json()["valid"] is False


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(child) for child in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(child) for child in value), default=0)
    return 0


_text = st.text(alphabet='[]{}"\\ab\u00e9\U0001f600,:', max_size=8)
_values = st.recursive(
    st.none() | st.booleans() | st.integers() | _text,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_text, children, max_size=3),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None)
@given(value=_values, indent=st.sampled_from([None, 1]), ensure_ascii=st.booleans())
def test_the_depth_scan_measures_what_json_would_nest(value: Any, indent: Any, ensure_ascii: bool):
    raw = json.dumps(value, indent=indent, ensure_ascii=ensure_ascii).encode()
    depth = _depth(value)
    for limit in range(max(depth - 2, 0), depth + 2):
        assert json_depth_exceeds(raw, limit) is (depth > limit), (raw, limit)


# --- Size ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=ENDPOINT_IDS)
def test_a_body_over_one_mebibyte_is_413(client: APIClient, endpoint: tuple[str, str]):
    before = rows()
    body = json.dumps({"token": "x" * MIB}).encode()

    problem = refused(send(client, endpoint, body), 413, "payload-too-large")

    assert problem["max_bytes"] == MIB
    assert str(MIB) in problem["detail"]
    assert rows() == before


def test_the_size_limit_is_the_setting_to_the_byte(client: APIClient, settings: Any):
    settings.JSON_MAX_BYTES = 2048
    at_limit = json.dumps({"token": "x" * 2035}).encode()
    assert len(at_limit) == 2048

    assert send(client, VERIFY, at_limit).status_code == 200
    problem = refused(send(client, VERIFY, at_limit + b" "), 413, "payload-too-large")
    assert problem["max_bytes"] == 2048


# --- Strings the database cannot store ----------------------------------------------------------

LONE_SURROGATES = {
    "in-a-name": b'{"\\ud800": 1}',
    "high-alone": b'{"sku": "slug-\\ud83d", "token": "a.b.c", "public_key": "k"}',
    "low-alone": b'{"sku": "\\ude00", "token": "\\ude00", "public_key": "\\ude00"}',
    "reversed-pair": b'{"sku": "\\ude00\\ud83d", "token": "\\ude00\\ud83d", "public_key": "a"}',
    "in-a-list": b'{"public_key": ["\\udfff"], "sku": ["\\udfff"], "token": ["\\udfff"]}',
}


@pytest.mark.parametrize("case", list(LONE_SURROGATES))
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=ENDPOINT_IDS)
def test_a_lone_surrogate_is_a_400_not_a_500(
    client: APIClient, endpoint: tuple[str, str], case: str
):
    before = rows()

    problem = refused(send(client, endpoint, LONE_SURROGATES[case]), 400, "parse-error")

    assert "lone surrogate" in problem["detail"]
    assert problem["pointer"].startswith("/")
    assert rows() == before


def test_a_surrogate_pair_is_one_character_and_is_taken(client: APIClient):
    response = send(client, VERIFY, b'{"token": "\\ud83d\\ude00"}')

    assert response.status_code == 200
    assert response.json()["valid"] is False


@pytest.mark.parametrize(
    "body",
    [
        b'{"public_key": "\\u0000"}',
        b'{"public_key": {"k\\u0000": "x"}}',
        b'{"public_key": ["a", "b\\u0000c"]}',
    ],
)
def test_nul_is_refused_where_a_body_may_be_stored(client: APIClient, body: bytes):
    before = rows()

    problem = refused(send(client, DELIVERY_KEY, body), 400, "parse-error")

    assert "NUL character" in problem["detail"]
    assert "\\u0000" in problem["detail"]
    assert rows() == before


def test_an_escaped_backslash_before_u0000_is_not_nul(client: APIClient):
    # The JSON text \\u0000 is a backslash followed by "u0000": six ordinary characters.
    problem = refused(
        send(client, DELIVERY_KEY, b'{"public_key": "\\\\u0000"}'), 400, "invalid-input"
    )

    assert "NUL" not in problem["detail"]


def test_the_license_check_stores_nothing_and_takes_nul_as_a_verdict(client: APIClient):
    response = send(client, VERIFY, b'{"token": "\\u0000.\\u0000.\\u0000"}')

    assert response.status_code == 200
    assert response.json()["reason"].startswith("malformed")


# --- Encoding, numbers, duplicate names ---------------------------------------------------------

NOT_ACCEPTED = {
    "not-utf8": (b'{"token": "\xff"}', "not UTF-8"),
    "encoded-surrogate": (b'{"token": "\xed\xa0\x80"}', "not UTF-8"),
    "overlong-utf8": (b'{"token": "\xc0\xaf"}', "not UTF-8"),
    "bom": (b'\xef\xbb\xbf{"token": "a"}', "not valid JSON"),
    "duplicate-name": (b'{"token": "a.b.c", "token": "x"}', 'the name "token" appears twice'),
    "nan": (b'{"token": NaN}', "NaN is not a JSON number"),
    "infinity": (b'{"token": -Infinity}', "-Infinity is not a JSON number"),
    "huge-float": (b'{"token": 1e400}', "beyond a float's range"),
    "huge-int": (b'{"token": ' + b"9" * 5000 + b"}", "(4300 digits)"),
    "truncated": (b'{"token": "a', "not valid JSON"),
    "empty": (b" ", "not valid JSON"),
}


@pytest.mark.parametrize("case", list(NOT_ACCEPTED))
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=ENDPOINT_IDS)
def test_a_body_that_is_not_acceptable_json_is_a_parse_error(
    client: APIClient, endpoint: tuple[str, str], case: str
):
    body, says = NOT_ACCEPTED[case]
    before = rows()

    problem = refused(send(client, endpoint, body), 400, "parse-error")

    assert says in problem["detail"]
    assert rows() == before


def test_a_charset_other_than_utf8_is_refused(client: APIClient):
    body = '{"token": "caf\u00e9"}'.encode("latin-1")

    problem = refused(
        send(client, VERIFY, body, "application/json; charset=latin-1"), 400, "parse-error"
    )

    assert "charset=latin-1" in problem["detail"]
    # Declared UTF-8 is UTF-8.
    utf8 = send(client, VERIFY, body.decode("latin-1").encode(), "application/json; charset=UTF-8")
    assert utf8.status_code == 200
