"""The buyer's license and proof endpoints, and the public license check:
GET /api/v1/orders/{id}/license, POST /api/v1/licenses/verify, GET /api/v1/proofs/{id}."""

import json

import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rest_framework.test import APIClient

from accounts.services import api_token_issue
from licensing.models import License, Proof
from licensing.services import license_revoke, order_fulfil
from licensing.services.deliveries import proof_fingerprint
from marketplace.jwk import b64url
from tests.catalog.factories import TEST_ACTOR
from tests.licensing.factories import order_delivered, order_licensed, order_paid
from tests.orders.factories import order_checked_out, sku_for_sale

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.filterwarnings("ignore:EdDSA is deprecated"),
]

VERIFY = "/api/v1/licenses/verify"


def client_of(user) -> APIClient:
    _, token = api_token_issue(email=user.email, actor=TEST_ACTOR)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def jwks_document(client) -> dict:
    return client.get("/.well-known/jwks.json").json()


# --- GET /api/v1/orders/{id}/license -----------------------------------------------------------


def test_the_buyer_gets_their_license(buyer, buyer_client):
    order = order_licensed(buyer, license_duration_days=365)
    license = License.objects.get(order=order)

    response = buyer_client.get(f"/api/v1/orders/{order.pk}/license")

    assert response.status_code == 200, response.content
    assert response["Cache-Control"] == "no-store"
    body = response.json()
    assert {key: body[key] for key in ("license_key", "token", "kid", "status", "expires_at")} == {
        "license_key": license.license_key,
        "token": license.token,
        "kid": license.kid,
        "status": "active",
        "expires_at": license.expires_at.isoformat().replace("+00:00", "Z"),
    }


def test_a_revoked_license_is_shown_revoked(buyer, buyer_client):
    order = order_licensed(buyer)
    license = License.objects.get(order=order)
    license_revoke(license_id=license.pk, reason="abuse", actor=TEST_ACTOR)

    body = buyer_client.get(f"/api/v1/orders/{order.pk}/license").json()
    assert (body["license_key"], body["status"]) == (license.license_key, "revoked")


def test_another_buyers_license_is_not_found(buyer, other_buyer):
    order = order_licensed(other_buyer)
    response = client_of(buyer).get(f"/api/v1/orders/{order.pk}/license")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/problem+json"
    assert License.objects.get(order=order).token not in response.content.decode()


def test_no_license_before_it_is_issued_is_a_conflict(buyer, buyer_client):
    pending = order_checked_out(buyer, sku_for_sale())
    response = buyer_client.get(f"/api/v1/orders/{pending.pk}/license")
    assert response.status_code == 409
    assert response.json()["delivery"] == "not_paid"

    paid = order_paid(buyer)  # released, but no worker has issued the license yet
    response = buyer_client.get(f"/api/v1/orders/{paid.pk}/license")
    assert (response.status_code, response.json()["delivery"]) == (409, "released")


def test_the_license_endpoint_needs_a_buyer(buyer):
    order = order_licensed(buyer)
    assert APIClient().get(f"/api/v1/orders/{order.pk}/license").status_code == 401


# --- POST /api/v1/licenses/verify ----------------------------------------------------------------


def test_anyone_can_verify_a_license_online(buyer):
    license = License.objects.get(order=order_licensed(buyer))

    response = APIClient().post(VERIFY, {"token": license.token}, format="json")

    assert response.status_code == 200
    body = response.json()
    assert (body["valid"], body["reason"]) == (True, "valid")
    assert body["license"]["jti"] == str(license.pk)


def test_verify_ignores_credentials_it_does_not_need(buyer):
    license = License.objects.get(order=order_licensed(buyer))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer not-a-token")
    response = client.post(VERIFY, {"token": license.token}, format="json")
    assert (response.status_code, response.json()["valid"]) == (200, True)


def test_a_revoked_license_does_not_verify(buyer):
    license = License.objects.get(order=order_licensed(buyer))
    license_revoke(license_id=license.pk, reason="chargeback", actor=TEST_ACTOR)

    body = APIClient().post(VERIFY, {"token": license.token}, format="json").json()
    assert (body["valid"], body["reason"]) == (False, "revoked")


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("", "malformed"),
        ("abc", "malformed"),
        ("a.b", "malformed"),
        ("a.b.c.d", "malformed"),
        ("%%%.%%%.%%%", "malformed"),
        ("\x00.\x00.\x00", "malformed"),
        ("😀.😀.😀", "malformed"),
        (f"{b64url(b'{}')}.{b64url(b'{}')}.", "malformed"),
        (f"{b64url(b'[' * 9000)}.{b64url(b'{}')}.AAAA", "malformed"),
        ("x" * 20_000, "malformed"),
        (
            f"{b64url(json.dumps({'alg': 'EdDSA', 'kid': 'license-x'}).encode())}"
            f".{b64url(b'{}')}.AAAA",
            "unknown-key",
        ),
    ],
)
def test_a_malformed_token_is_a_verdict_not_an_error(token, reason):
    response = APIClient().post(VERIFY, {"token": token}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["valid"] is False
    assert body["reason"].split(":")[0] == reason, body["reason"]
    assert body["license"] is None


def test_a_truncated_license_is_a_verdict_not_an_error(buyer):
    token = License.objects.get(order=order_licensed(buyer)).token
    client = APIClient()
    for length in (len(token) - 1, len(token) - 30, token.rindex("."), len(token) // 3, 1):
        body = client.post(VERIFY, {"token": token[:length]}, format="json").json()
        assert body["valid"] is False, length
        assert body["reason"].split(":")[0] in {"malformed", "bad-signature"}, body["reason"]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    token=st.one_of(
        st.text(max_size=300),
        st.lists(st.text(max_size=60), min_size=1, max_size=5).map(".".join),
        st.lists(
            st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"),
            min_size=3,
            max_size=3,
        ).map(".".join),
    )
)
def test_fuzzed_tokens_never_make_a_server_error(token):
    response = APIClient().post(VERIFY, {"token": token}, format="json")
    assert response.status_code == 200, (token, response.content)
    assert response.json()["valid"] is False


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"token": 12}, "token"),
        ({"token": None}, "token"),
        ({"token": ["a.b.c"]}, "token"),
        ({"token": {"jws": "a.b.c"}}, "token"),
        ({}, "token"),
        ({"token": "a.b.c", "kid": "x"}, "kid"),
        (["a.b.c"], "non_field_errors"),
        ("a.b.c", "non_field_errors"),
    ],
)
def test_a_body_that_is_not_a_token_is_refused_naming_the_field(body, field):
    response = APIClient().post(VERIFY, json.dumps(body), content_type="application/json")
    assert response.status_code == 400, response.content
    assert response["Content-Type"] == "application/problem+json"
    assert field in response.json()["errors"]


# --- Proofs ------------------------------------------------------------------------------------


def test_the_buyer_gets_the_proof_and_it_verifies_offline(buyer, buyer_client, client):
    delivered = order_delivered(buyer)
    proof = Proof.objects.get(order=delivered.order)

    order_body = buyer_client.get(f"/api/v1/orders/{delivered.order.pk}").json()
    assert order_body["proof"] == str(proof.pk)
    listed = buyer_client.get("/api/v1/orders").json()
    assert [item["proof"] for item in listed["results"]] == [str(proof.pk)]

    response = buyer_client.get(f"/api/v1/proofs/{proof.pk}")
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == str(proof.pk)
    assert body["signer_kid"] == jwt.get_unverified_header(body["token"])["kid"]
    assert body["fingerprint"] == proof_fingerprint(body["payload"])

    key = jwt.PyJWKSet.from_dict(jwks_document(client))[body["signer_kid"]]
    # As docs/licensing.md#proofs says a proof is checked: its own iss, aud and typ.
    decoded = jwt.decode_complete(
        body["token"],
        key=key,
        algorithms=["EdDSA", "ES256"],
        issuer="marketplace:delivery",
        audience="marketplace:delivery-proof",
    )
    assert decoded["header"]["typ"] == "mkp-proof+jws"
    claims = decoded["payload"]
    assert claims == body["payload"]
    assert claims["order"] == str(delivered.order.pk)
    assert claims["sku"] == delivered.order.sku_slug
    assert claims["artifact_sha256"] == delivered.order.sku.artifact.sha256
    assert claims["package_sha256"] == delivered.delivery.package_sha256
    assert claims["signer_kid"] == body["signer_kid"]


def test_no_proof_before_delivery(buyer, buyer_client):
    order = order_paid(buyer)
    order_fulfil(order_id=order.pk)  # licensed, package still pending
    assert buyer_client.get(f"/api/v1/orders/{order.pk}").json()["proof"] is None


def test_another_buyers_proof_is_not_found(buyer, other_buyer):
    proof = Proof.objects.get(order=order_delivered(other_buyer).order)
    response = client_of(buyer).get(f"/api/v1/proofs/{proof.pk}")
    assert response.status_code == 404
    assert proof.token not in response.content.decode()
    assert APIClient().get(f"/api/v1/proofs/{proof.pk}").status_code == 401
