"""Licenses and delivery proofs are signed by the same license key, and neither passes for the
other: the offline check documented in docs/licensing.md (run here as the page shows it, with
PyJWT and with joserfc) and the online check (POST /api/v1/licenses/verify) accept a license
and refuse a proof, and any token that is not the very license this platform stored."""

import re
import textwrap
from pathlib import Path
from typing import Any

import jwt
import pytest
from joserfc.errors import JoseError
from rest_framework.test import APIClient

from audit.signing_keys import signing_key_active
from licensing.jws import LICENSE_TOKEN, PROOF_TOKEN, jws_parse
from licensing.models import License, Proof
from licensing.services import license_verify
from licensing.services.licenses import PERPETUAL_EXP
from marketplace.canonical import canonical_json
from marketplace.jwk import b64url
from marketplace.keystore import signer_for
from marketplace.models import SigningKeyPurpose
from tests.licensing.factories import order_delivered, order_licensed

pytestmark = [
    pytest.mark.django_db,
    # RFC 9864 names Ed25519 "Ed25519"; the platform publishes the long-standing "EdDSA".
    pytest.mark.filterwarnings("ignore:EdDSA is deprecated"),
]

DOCS = Path(__file__).resolve().parents[2] / "docs" / "licensing.md"
VERIFY = "/api/v1/licenses/verify"
# A fenced Python block, indented as a whole (it sits in a list item).
CODE_BLOCK = re.compile(r"^( *)```python\n((?:\1.*\n|\n)*?)\1```", re.M)


def documented_check() -> dict[str, Any]:
    """The offline check's code block from docs/licensing.md, run as it stands there."""
    blocks = [
        textwrap.dedent(match.group(2))
        for match in CODE_BLOCK.finditer(DOCS.read_text(encoding="utf-8"))
    ]
    code = [block for block in blocks if block.startswith("# license_check.py")]
    assert len(code) == 1, "docs/licensing.md should have one `# license_check.py` code block"
    namespace: dict[str, Any] = {"__name__": "license_check"}
    exec(compile(code[0], str(DOCS), "exec"), namespace)  # noqa: S102 - our own docs page
    return namespace


@pytest.fixture(scope="module")
def check() -> dict[str, Any]:
    return documented_check()


def jwks(client: Any) -> dict[str, Any]:
    return client.get("/.well-known/jwks.json").json()


def both_refuse(check: dict[str, Any], token: str, document: dict[str, Any]) -> None:
    with pytest.raises(jwt.PyJWTError):
        check["license_claims_pyjwt"](token, document)
    with pytest.raises(JoseError):
        check["license_claims_joserfc"](token, document)


def signed(header_typ: str, claims: dict[str, Any]) -> str:
    """A token signed by the active license key with any header `typ` and claims: what a
    proof, a token of the old forms, or a mistake on the platform's side looks like."""
    signer = signer_for(signing_key_active(purpose=SigningKeyPurpose.LICENSE))
    header = {"alg": signer.algorithm, "kid": signer.kid, "typ": header_typ}
    signing_input = f"{b64url(canonical_json(header))}.{b64url(canonical_json(claims))}"
    return f"{signing_input}.{b64url(signer.sign(signing_input.encode('ascii')))}"


# --- The documented offline check --------------------------------------------------------------


@pytest.mark.parametrize("days", [30, None], ids=["limited", "perpetual"])
def test_the_documented_check_accepts_a_license_with_both_libraries(client, check, buyer, days):
    license = License.objects.get(order=order_licensed(buyer, license_duration_days=days))
    document = jwks(client)

    for verify in (check["license_claims_pyjwt"], check["license_claims_joserfc"]):
        claims = verify(license.token, document)
        assert claims == jws_parse(license.token).payload
        assert (claims["jti"], claims["iss"], claims["aud"]) == (
            str(license.pk),
            "marketplace:licensing",
            "marketplace:license",
        )
        expected_exp = int(license.expires_at.timestamp()) if days else PERPETUAL_EXP
        assert claims["exp"] == expected_exp


def test_the_documented_check_refuses_a_delivery_proof_with_both_libraries(client, check, buyer):
    proof = Proof.objects.get(order=order_delivered(buyer).order)
    document = jwks(client)
    # The proof is genuine: signed by a published license key, as the JWK Set says.
    assert jwt.get_unverified_header(proof.token)["kid"] in {k["kid"] for k in document["keys"]}

    both_refuse(check, proof.token, document)

    # A proof made before proofs carried iss and aud: the check the docs used to show (the
    # signature alone) took it for a perpetual license; this one does not.
    old_proof = signed(
        PROOF_TOKEN.typ, {k: v for k, v in proof.payload.items() if k not in {"iss", "aud"}}
    )
    key = jwt.PyJWKSet.from_dict(document)[jwt.get_unverified_header(old_proof)["kid"]]
    assert "exp" not in jwt.decode(old_proof, key=key, algorithms=["EdDSA", "ES256"])
    both_refuse(check, old_proof, document)


# --- Tokens that are not a license, online and offline -----------------------------------------


def _license_claims(license: License) -> dict[str, Any]:
    return dict(jws_parse(license.token).payload)


def _without(claims: dict[str, Any], name: str) -> dict[str, Any]:
    return {key: value for key, value in claims.items() if key != name}


MISSHAPEN = {
    "proof-typ": lambda c: (PROOF_TOKEN.typ, c),
    "proof-aud": lambda c: (LICENSE_TOKEN.typ, {**c, "aud": PROOF_TOKEN.aud}),
    "proof-iss": lambda c: (LICENSE_TOKEN.typ, {**c, "iss": PROOF_TOKEN.iss}),
    "no-aud": lambda c: (LICENSE_TOKEN.typ, _without(c, "aud")),
    "no-iss": lambda c: (LICENSE_TOKEN.typ, _without(c, "iss")),
    "no-exp": lambda c: (LICENSE_TOKEN.typ, _without(c, "exp")),
    "no-jti": lambda c: (LICENSE_TOKEN.typ, _without(c, "jti")),
    "no-typ": lambda c: ("", c),
    "generic-jwt": lambda c: ("JWT", c),
    "aud-list": lambda c: (LICENSE_TOKEN.typ, {**c, "aud": [LICENSE_TOKEN.aud, "x"]}),
    "exp-text": lambda c: (LICENSE_TOKEN.typ, {**c, "exp": str(c["exp"])}),
}


@pytest.mark.parametrize("shape", MISSHAPEN)
def test_a_token_that_is_not_shaped_as_a_license_is_refused_online(buyer, shape):
    license = License.objects.get(order=order_licensed(buyer, license_duration_days=30))
    token = signed(*MISSHAPEN[shape](_license_claims(license)))

    verdict = license_verify(token)

    assert (verdict.valid, verdict.reason.split(":")[0]) == (False, "not-a-license"), verdict.reason
    assert verdict.claims is None


@pytest.mark.parametrize(
    "shape",
    ["proof-typ", "proof-aud", "proof-iss", "no-aud", "no-iss", "no-exp", "no-jti", "generic-jwt"],
)
def test_the_documented_check_refuses_what_is_not_shaped_as_a_license(client, check, buyer, shape):
    license = License.objects.get(order=order_licensed(buyer, license_duration_days=30))
    both_refuse(check, signed(*MISSHAPEN[shape](_license_claims(license))), jwks(client))


def test_online_verify_refuses_a_proof_as_not_a_license(buyer):
    proof = Proof.objects.get(order=order_delivered(buyer).order)

    response = APIClient().post(VERIFY, {"token": proof.token}, format="json")

    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["valid"], body["license"]) == (False, None)
    assert body["reason"].startswith("not-a-license: "), body["reason"]
    assert "mkp-proof+jws" in body["reason"]


def test_online_verify_takes_only_the_stored_token_of_a_license(buyer):
    license = License.objects.get(order=order_licensed(buyer, license_duration_days=30))
    claims = _license_claims(license)
    # Signed by the license key with the license's own id, but not what was issued.
    more_seats = signed(LICENSE_TOKEN.typ, {**claims, "seats": 100})
    later = signed(LICENSE_TOKEN.typ, {**claims, "exp": PERPETUAL_EXP})

    for token in (more_seats, later):
        verdict = license_verify(token)
        assert (verdict.valid, verdict.reason.split(":")[0], verdict.claims) == (
            False,
            "unknown-license",
            None,
        )
    assert license_verify(license.token).valid


# --- Licenses issued before the token kinds ---------------------------------------------------


def _legacy(license: License, **changes: Any) -> str:
    """The license as it was signed before: typ JWT, iss marketplace, no aud, no exp when
    perpetual."""
    claims = {k: v for k, v in _license_claims(license).items() if k != "aud"}
    claims["iss"] = "marketplace"
    if license.expires_at is None:
        del claims["exp"]
    return signed("JWT", {**claims, **changes})


@pytest.mark.parametrize("days", [30, None], ids=["limited", "perpetual"])
def test_a_license_of_the_old_form_verifies_online_only_as_stored(client, check, buyer, days):
    license = License.objects.get(order=order_licensed(buyer, license_duration_days=days))
    legacy = _legacy(license)
    License.objects.filter(pk=license.pk).update(token=legacy)

    verdict = license_verify(legacy)
    assert (verdict.valid, verdict.reason, verdict.license_id) == (True, "valid", str(license.pk))
    if days:
        assert license_verify(legacy, now=license.expires_at).reason == "expired"

    # The same form with other claims, or the new-form token no longer stored, is not it.
    assert license_verify(_legacy(license, seats=50)).reason.startswith("unknown-license")
    assert license_verify(license.token).reason.startswith("unknown-license")
    # Offline, only the current form is a license.
    both_refuse(check, legacy, jwks(client))


def test_a_proof_naming_a_license_is_refused_for_what_it_is(buyer):
    # Even a proof that carried a license's id, stored as that license's token, is not one.
    delivered = order_delivered(buyer)
    proof = Proof.objects.get(order=delivered.order)
    token = signed(PROOF_TOKEN.typ, {**proof.payload, "jti": str(delivered.license.pk)})
    License.objects.filter(pk=delivered.license.pk).update(token=token)

    verdict = license_verify(token)
    assert (verdict.valid, verdict.reason.split(":")[0]) == (False, "not-a-license")
