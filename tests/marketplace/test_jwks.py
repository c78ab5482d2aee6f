"""GET /.well-known/jwks.json: every active and retired key of every purpose and backend,
revoked keys absent, cache headers with ETag revalidation; and the offline reading of JWK Sets
(marketplace.jwk) for both EdDSA and ES256. Tokens are checked with independent JOSE libraries
(PyJWT and joserfc) against the published document alone."""

import json
import re
from typing import Any

import boto3
import jwt
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc import jws
from joserfc.jwk import KeySet

from audit.signing_keys import signing_key_active, signing_key_revoke, signing_key_rotate
from marketplace.jwk import PublicKey, b64url, es256_signature_from_der, public_keys_from_jwks
from marketplace.keystore import Signer, signer_for
from marketplace.models import SigningKeyPurpose
from tests.support.moto import CREDENTIALS, REGION
from tests.support.signing_proxy import SigningProxy

pytestmark = [
    pytest.mark.django_db,
    # RFC 9864 names Ed25519 "Ed25519"; the platform publishes the long-standing "EdDSA".
    pytest.mark.filterwarnings("ignore:EdDSA is deprecated"),
]

URL = "/.well-known/jwks.json"
LICENSE = SigningKeyPurpose.LICENSE


def compact_jws(signer: Signer, claims: dict[str, Any]) -> str:
    header = {"alg": signer.algorithm, "kid": signer.kid, "typ": "JWT"}
    signing_input = ".".join(
        b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
    )
    return f"{signing_input}.{b64url(signer.sign(signing_input.encode()))}"


def pyjwt_claims(token: str, document: dict[str, Any]) -> dict[str, Any]:
    """PyJWT, the way a licensee's code would: the key named by the token's kid, from the
    JWK Set, and only the algorithms the platform signs with."""
    kid = jwt.get_unverified_header(token)["kid"]
    key = jwt.PyJWKSet.from_dict(document)[kid]
    return jwt.decode(token, key=key, algorithms=["EdDSA", "ES256"])


def joserfc_claims(token: str, document: dict[str, Any]) -> dict[str, Any]:
    key_set = KeySet.import_key_set(document)
    return json.loads(
        jws.deserialize_compact(token, key_set, algorithms=["EdDSA", "ES256"]).payload
    )


@pytest.fixture
def kms(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, settings: Any) -> None:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    settings.KEYSTORE_BACKEND = "kms"
    settings.KMS_ENDPOINT_URL = moto_endpoint
    settings.KMS_REGION = REGION
    settings.LICENSE_SIGNER_KEY_ID = ""


def test_the_document_holds_the_keys_of_every_backend_and_purpose_but_no_revoked_one(
    api_client, settings, kms, signing_proxy: SigningProxy
) -> None:
    audit = signing_key_active(purpose=SigningKeyPurpose.AUDIT)
    settings.KEYSTORE_BACKEND = "local"
    local = signing_key_active(purpose=LICENSE)
    settings.KEYSTORE_BACKEND = "kms"
    kms_key, _ = signing_key_rotate(purpose=LICENSE)
    settings.KEYSTORE_BACKEND = "proxy"
    proxy_key, _ = signing_key_rotate(purpose=LICENSE)
    settings.KEYSTORE_BACKEND = "local"
    revoked, _ = signing_key_rotate(purpose=SigningKeyPurpose.AUDIT)
    signing_key_revoke(kid=revoked.kid, reason="test")

    response = api_client.get(URL)

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    keys = {jwk["kid"]: jwk for jwk in response.json()["keys"]}
    assert list(keys) == [audit.kid, local.kid, kms_key.kid, proxy_key.kid]  # oldest first
    assert {
        kid: (jwk["kty"], jwk.get("crv"), jwk["alg"], jwk["use"]) for kid, jwk in keys.items()
    } == {
        audit.kid: ("OKP", "Ed25519", "EdDSA", "sig"),
        local.kid: ("OKP", "Ed25519", "EdDSA", "sig"),
        kms_key.kid: ("EC", "P-256", "ES256", "sig"),
        proxy_key.kid: ("EC", "P-256", "ES256", "sig"),
    }
    assert set(keys[kms_key.kid]) == {"kty", "crv", "x", "y", "kid", "alg", "use"}
    assert set(keys[local.kid]) == {"kty", "crv", "x", "kid", "alg", "use"}
    # The published P-256 key is the one KMS holds.
    kms_public = boto3.client(
        "kms", endpoint_url=settings.KMS_ENDPOINT_URL, region_name=REGION
    ).get_public_key(KeyId=kms_key.backend_key_id)["PublicKey"]
    assert public_keys_from_jwks(response.json())[kms_key.kid].der() == kms_public
    # Both independent libraries read every key.
    assert {key.kid for key in KeySet.import_key_set(response.json()).keys} == set(keys)
    assert {key.key_id for key in jwt.PyJWKSet.from_dict(response.json()).keys} == set(keys)


def test_cache_headers_and_a_304_for_an_unchanged_document(api_client) -> None:
    signing_key_active(purpose=SigningKeyPurpose.AUDIT)

    first = api_client.get(URL)
    etag = first["ETag"]

    assert first["Cache-Control"] == "public, max-age=300"
    assert re.fullmatch(r'"[0-9a-f]{64}"', etag)
    assert api_client.get(URL)["ETag"] == etag  # the same keys, the same tag
    for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        revalidated = api_client.get(URL, HTTP_IF_NONE_MATCH=header)
        assert revalidated.status_code == 304, header
        assert revalidated.content == b""
        assert (revalidated["ETag"], revalidated["Cache-Control"]) == (
            etag,
            "public, max-age=300",
        )
    assert api_client.get(URL, HTTP_IF_NONE_MATCH='"stale"').status_code == 200

    signing_key_rotate(purpose=SigningKeyPurpose.AUDIT)

    changed = api_client.get(URL, HTTP_IF_NONE_MATCH=etag)
    assert changed.status_code == 200
    assert changed["ETag"] != etag
    assert len(changed.json()["keys"]) == 2


def test_an_empty_key_store_publishes_an_empty_set(api_client) -> None:
    response = api_client.get(URL)

    assert response.status_code == 200
    assert response.json() == {"keys": []}


@pytest.mark.parametrize("backend", ["local", "kms", "proxy"])
def test_a_token_signed_before_a_rotation_verifies_against_the_jwks_after_it(
    api_client, settings, backend, request
) -> None:
    if backend == "kms":
        request.getfixturevalue("kms")
    elif backend == "proxy":
        request.getfixturevalue("signing_proxy")
    else:
        settings.KEYSTORE_BACKEND = "local"
    before = compact_jws(signer_for(signing_key_active(purpose=LICENSE)), {"license": "old"})

    new, retired = signing_key_rotate(purpose=LICENSE)
    after = compact_jws(signer_for(new), {"license": "new"})
    document = api_client.get(URL).json()

    assert retired is not None
    for token, claims in ((before, {"license": "old"}), (after, {"license": "new"})):
        assert pyjwt_claims(token, document) == claims
        assert joserfc_claims(token, document) == claims

    signing_key_revoke(kid=retired.kid, reason="compromised")
    document = api_client.get(URL).json()
    assert [jwk["kid"] for jwk in document["keys"]] == [new.kid]
    with pytest.raises(KeyError):
        pyjwt_claims(before, document)
    assert pyjwt_claims(after, document) == {"license": "new"}


# --- Reading JWK Sets offline ------------------------------------------------------------------


def _p256_jwk(kid: str = "ec") -> tuple[ec.EllipticCurvePrivateKey, dict[str, Any]]:
    private_key = ec.generate_private_key(ec.SECP256R1())
    return private_key, PublicKey(kid, "ES256", private_key.public_key()).jwk()


def test_es256_keys_are_read_and_verify_jose_signatures() -> None:
    private_key, jwk = _p256_jwk()
    signer = Signer("ec", "ES256", lambda message: _es256(private_key, message))

    [public] = public_keys_from_jwks({"keys": [jwk]}).values()
    signature = signer.sign(b"message")

    assert public.algorithm == "ES256"
    assert len(signature) == 64
    assert public.verifies(signature, b"message")
    assert not public.verifies(signature, b"messagE")
    assert not public.verifies(signature[:-1], b"message")  # wrong length: no, not an error
    assert not public.verifies(b"\x00" * 64, b"message")


def _es256(private_key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    return es256_signature_from_der(private_key.sign(message, ec.ECDSA(hashes.SHA256())))


def test_keys_nothing_here_signs_with_are_skipped() -> None:
    _, jwk = _p256_jwk()
    document = {
        "keys": [
            {"kty": "RSA", "kid": "rsa", "n": "AQAB", "e": "AQAB"},
            {**jwk, "kid": "enc", "use": "enc"},
            {"kty": "EC", "crv": "P-384", "kid": "p384", "x": "AA", "y": "AA"},
            {**jwk, "kid": "sig"},
        ]
    }

    assert list(public_keys_from_jwks(document)) == ["sig"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"y": None}, 'no "y"'),
        ({"x": b64url(b"\x01" * 31)}, "32 bytes each"),
        ({"y": b64url(b"\x01" * 32)}, "unreadable public key"),  # not on the curve
        ({"alg": "EdDSA"}, 'signs with ES256, not "EdDSA"'),
    ],
)
def test_an_unusable_ec_key_is_refused_with_a_reason(change, message) -> None:
    _, jwk = _p256_jwk()
    broken = {k: v for k, v in {**jwk, **change}.items() if v is not None}

    with pytest.raises(ValueError, match=message):
        public_keys_from_jwks({"keys": [broken]})
