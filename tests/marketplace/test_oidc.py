"""The checks every provider JWT passes (marketplace.oidc.verify), against the real provider
process (tests/support/oidc.py): tokens it signs, tokens signed with its key but wrong, and
forgeries."""

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from marketplace import oidc
from tests.support.oidc import API_AUDIENCE, OIDCProvider


@pytest.fixture
def provider(oidc_provider: OIDCProvider, settings: Any) -> Iterator[OIDCProvider]:
    settings.OIDC_ISSUER = oidc_provider.issuer
    settings.OIDC_CLIENT_ID = oidc_provider.client_id
    oidc.forget()
    yield oidc_provider
    oidc.forget()


def claims_for(provider: OIDCProvider, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": provider.issuer,
        "sub": "someone",
        "aud": API_AUDIENCE,
        "iat": now,
        "exp": now + 300,
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def refusal(token: str, audience: str = API_AUDIENCE) -> str:
    with pytest.raises(oidc.TokenRefused) as refused:
        oidc.verify(token, audience=audience)
    return refused.value.code


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_a_token_the_provider_issued_passes(provider: OIDCProvider):
    token = provider.access_token("buyer")

    claims = oidc.verify(token, audience=API_AUDIENCE)

    assert claims["sub"] == "buyer"
    assert claims["iss"] == provider.issuer


def test_an_es256_token_passes(provider: OIDCProvider):
    kid = provider.rotate("ES256")
    token = provider.sign(claims_for(provider), header={"alg": "ES256"})

    assert jwt.get_unverified_header(token)["kid"] == kid
    assert oidc.verify(token, audience=API_AUDIENCE)["sub"] == "someone"


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"aud": "https://elsewhere.example"}, "wrong_audience"),
        ({"iss": "https://id.elsewhere.example"}, "wrong_issuer"),
        ({"exp": int(time.time()) - 3600, "iat": int(time.time()) - 7200}, "expired"),
        ({"iat": int(time.time()) + 3600, "exp": int(time.time()) + 7200}, "not_yet_valid"),
        ({"nbf": int(time.time()) + 3600}, "not_yet_valid"),
        ({"exp": None}, "missing_claim"),
        ({"sub": None}, "missing_claim"),
        ({"aud": [API_AUDIENCE, "https://other.example"]}, "wrong_audience"),
    ],
)
def test_tokens_signed_by_the_provider_but_wrong_are_refused(
    provider: OIDCProvider, changes: dict[str, Any], code: str
):
    assert refusal(provider.sign(claims_for(provider, **changes))) == code


def test_alg_none_is_refused(provider: OIDCProvider):
    kid = jwt.get_unverified_header(provider.access_token("buyer"))["kid"]
    token = f"{b64({'alg': 'none', 'kid': kid})}.{b64(claims_for(provider))}."

    assert refusal(token) == "unsupported_algorithm"


def test_an_hs256_token_keyed_with_the_providers_public_key_is_refused(provider: OIDCProvider):
    token = provider.sign(claims_for(provider), key="hs256-with-public")

    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    assert refusal(token) == "unsupported_algorithm"


def test_an_rs256_header_on_the_ec_key_is_refused(provider: OIDCProvider):
    kid = provider.rotate("ES256")
    token = provider.sign(claims_for(provider), header={"alg": "ES256"})
    _header, payload, signature = token.split(".")
    forged_header = b64({"alg": "RS256", "kid": kid, "typ": "JWT"})

    assert refusal(f"{forged_header}.{payload}.{signature}") == "unsupported_algorithm"


def test_a_tampered_payload_is_refused(provider: OIDCProvider):
    header, _, signature = provider.sign(claims_for(provider)).split(".")
    payload = b64(claims_for(provider, sub="admin"))

    assert refusal(f"{header}.{payload}.{signature}") == "bad_signature"


def test_forged_kids_cannot_make_us_fetch_the_keys_for_each_request(provider: OIDCProvider):
    own_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    oidc.verify(provider.access_token("buyer"), audience=API_AUDIENCE)  # the keys, cached
    before = provider.stats()["jwks_fetches"]

    for n in range(25):
        forged = jwt.encode(
            claims_for(provider), own_key, algorithm="RS256", headers={"kid": f"forged-{n}"}
        )
        assert refusal(forged) == "unknown_key"

    assert provider.stats()["jwks_fetches"] - before == oidc.REFETCH_BUDGET
    # A kid already fetched for is not fetched for again.
    again = provider.stats()["jwks_fetches"]
    oidc.forget()
    oidc.verify(provider.access_token("buyer"), audience=API_AUDIENCE)
    forged = jwt.encode(
        claims_for(provider), own_key, algorithm="RS256", headers={"kid": "forged-again"}
    )
    for _ in range(5):
        assert refusal(forged) == "unknown_key"
    assert provider.stats()["jwks_fetches"] - again == 2  # the keys, then once for the kid
    # The budget spent, the provider's own tokens still pass from the kept keys.
    assert oidc.verify(provider.access_token("buyer"), audience=API_AUDIENCE)


def test_a_key_the_provider_withdrew_stops_passing_once_the_keys_are_old(
    provider: OIDCProvider, settings: Any
):
    old_token = provider.sign(claims_for(provider))
    assert oidc.verify(old_token, audience=API_AUDIENCE)
    provider.rotate("RS256", drop_old=True)

    settings.OIDC_JWKS_MAX_AGE_SECONDS = 0

    assert refusal(old_token) == "unknown_key"
    assert oidc.verify(provider.sign(claims_for(provider)), audience=API_AUDIENCE)


def test_an_access_token_must_say_it_is_one(provider: OIDCProvider):
    plain = provider.sign(claims_for(provider))
    typed = provider.sign(claims_for(provider), header={"typ": "at+jwt"})
    with_nonce = provider.sign(claims_for(provider, nonce="n-1"), header={"typ": "at+jwt"})

    assert oidc.verify(provider.access_token("buyer"), audience=API_AUDIENCE, kind="access")
    assert oidc.verify(typed, audience=API_AUDIENCE, kind="access")["sub"] == "someone"
    for token in (plain, with_nonce):
        with pytest.raises(oidc.TokenRefused) as refused:
            oidc.verify(token, audience=API_AUDIENCE, kind="access")
        assert refused.value.code == "not_an_access_token"


def test_a_multi_audience_access_token_needs_no_azp_naming_the_api(provider: OIDCProvider):
    token = provider.sign(
        claims_for(provider, aud=[API_AUDIENCE, "https://userinfo.example"], azp="spa"),
        header={"typ": "at+jwt"},
    )

    assert oidc.verify(token, audience=API_AUDIENCE, kind="access")["azp"] == "spa"


def test_a_rotated_key_is_followed_with_one_fetch(provider: OIDCProvider):
    oidc.verify(provider.sign(claims_for(provider)), audience=API_AUDIENCE)
    before = provider.stats()["jwks_fetches"]
    provider.rotate("RS256")

    for _ in range(3):
        assert oidc.verify(provider.sign(claims_for(provider)), audience=API_AUDIENCE)

    assert provider.stats()["jwks_fetches"] == before + 1


def test_garbage_is_malformed(provider: OIDCProvider):
    assert refusal("not.a.jwt") == "malformed"
    assert refusal("x" * 40) == "malformed"


def test_metadata_naming_another_issuer_is_refused(provider: OIDCProvider, settings: Any):
    settings.OIDC_ISSUER = provider.issuer + "/"
    oidc.forget()

    with pytest.raises(oidc.ProviderUnavailable, match="names issuer"):
        oidc.metadata()


def test_an_unreachable_provider_is_unavailable(settings: Any):
    settings.OIDC_ISSUER = "http://127.0.0.1:9"
    settings.OIDC_TIMEOUT_SECONDS = 2
    oidc.forget()
    try:
        with pytest.raises(oidc.ProviderUnavailable):
            oidc.metadata()
    finally:
        oidc.forget()
