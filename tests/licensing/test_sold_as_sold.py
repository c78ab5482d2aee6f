"""What was sold is what is licensed and delivered: the order's snapshot of the license terms
and of the artifact, not the SKU as it is later. And a token has one spelling only."""

import pytest

from catalog.models import Sku
from licensing.jws import JwsInvalid, jws_parse
from licensing.models import License
from licensing.services import license_verify, order_fulfil
from marketplace.jwk import b64url
from tests.licensing.factories import order_delivered, order_paid, sku_licensed

pytestmark = pytest.mark.django_db


def test_license_terms_are_those_of_the_sale(buyer):
    sku = sku_licensed(license_duration_days=30, license_seats=2, license_entitlements=["pro"])
    order = order_paid(buyer, sku)
    # The SKU's terms change after the sale, before the license is issued.
    Sku.objects.filter(pk=sku.pk).update(
        license_duration_days=None, license_seats=9, license_entitlements=["pro", "enterprise"]
    )

    order_fulfil(order_id=order.pk)

    license = License.objects.get(order=order)
    claims = license_verify(license.token).claims
    assert (license.seats, license.entitlements) == (2, ["pro"])
    assert (claims["seats"], claims["entitlements"]) == (2, ["pro"])
    assert claims["exp"] - claims["iat"] == 30 * 86400


def test_the_package_holds_the_artifact_that_was_sold(buyer):
    delivered = order_delivered(buyer)
    assert delivered.order.artifact_id == delivered.order.sku.artifact_id
    assert delivered.delivery.artifact_sha256 == delivered.order.artifact.sha256


def test_a_token_spelled_another_way_is_malformed(buyer):
    token = order_delivered(buyer).license.token
    header, payload, signature = token.split(".")
    # The last base64url character of a 64-byte signature carries 4 unused bits: flipping one
    # of them decodes to the same bytes, which a lax decoder would accept as the same token.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(signature[-1])
    respelled = signature[:-1] + alphabet[last ^ 1]

    for variant in (
        f"{header}.{payload}.{respelled}",
        f"{header}.{payload}.{signature}==",
        f"{header}.{payload}+.{signature}",
    ):
        with pytest.raises(JwsInvalid, match="malformed"):
            jws_parse(variant)
        assert license_verify(variant).valid is False


def test_a_deeply_nested_payload_is_malformed_not_an_error():
    nested = b"[" * 5000 + b"]" * 5000
    header = b64url(b'{"alg":"EdDSA","kid":"k"}')
    token = f"{header}.{b64url(nested)}.{b64url(b'x')}"

    verdict = license_verify(token)

    assert verdict.valid is False
    assert verdict.reason.startswith("malformed")
