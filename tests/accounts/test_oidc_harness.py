"""The OpenID Connect provider the tests sign staff in with (tests/support/oidc.py) does what
the other tests rely on: a real oidc-provider process, checked over HTTP, without mocks."""

import http.server
import secrets
import threading
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
import requests
from playwright.sync_api import Browser

# tests.support.oidc is the plugin with the oidc_provider fixture, loaded here until
# tests/conftest.py lists it with the other support plugins (loading it twice is harmless).
# Marked for assertion rewriting before the import below, as conftest's plugins are.
pytest_plugins = ["tests.support.oidc"]
pytest.register_assert_rewrite("tests.support.oidc")

from tests.support.oidc import (  # noqa: E402
    API_AUDIENCE,
    PASSWORD,
    STAFF_CLIENT_ID,
    OIDCError,
    OIDCProvider,
)


def _verify(provider: OIDCProvider, token: str, *, audience: str) -> dict:
    # The keys come from the JWKS over HTTP, as a relying party gets them.
    signing_key = jwt.PyJWKClient(provider.discovery()["jwks_uri"]).get_signing_key_from_jwt(token)
    return jwt.decode(
        token,
        signing_key,
        algorithms=["RS256", "ES256"],
        audience=audience,
        issuer=provider.issuer,
    )


def test_discovery_and_jwks_publish_an_rsa_and_an_ec_key(oidc_provider: OIDCProvider) -> None:
    discovery = requests.get(f"{oidc_provider.issuer}/.well-known/openid-configuration", timeout=5)

    assert discovery.status_code == 200
    document = discovery.json()
    assert document["issuer"] == oidc_provider.issuer
    assert document["code_challenge_methods_supported"] == ["S256"]
    assert document["end_session_endpoint"] == f"{oidc_provider.issuer}/session/end"
    keys = requests.get(document["jwks_uri"], timeout=5).json()["keys"]
    by_type = {key["kty"]: key for key in keys}
    assert set(by_type) == {"RSA", "EC"}
    assert by_type["RSA"]["kid"]
    assert by_type["RSA"]["alg"] == "RS256"
    assert by_type["EC"]["kid"]
    assert by_type["EC"]["crv"] == "P-256"
    assert all("d" not in key for key in keys)


def test_the_code_flow_gives_an_id_token_with_the_accounts_claims(
    oidc_provider: OIDCProvider,
) -> None:
    nonce = secrets.token_urlsafe(16)

    tokens = oidc_provider.code_flow_tokens("staff-ops", nonce=nonce)

    claims = _verify(oidc_provider, tokens["id_token"], audience=STAFF_CLIENT_ID)
    assert claims["sub"] == "staff-ops"
    assert claims["email"] == "ops@example.com"
    assert claims["email_verified"] is True
    assert claims["groups"] == ["marketplace-content-ops"]
    assert claims["amr"] == ["pwd", "otp"]
    assert claims["nonce"] == nonce
    assert claims["aud"] == STAFF_CLIENT_ID
    assert claims["iss"] == oidc_provider.issuer
    # The token response's scope is the access token's: the API's scopes among those asked.
    assert tokens["scope"] == "openid email"
    access = _verify(oidc_provider, tokens["access_token"], audience=API_AUDIENCE)
    assert access["sub"] == "staff-ops"
    assert jwt.get_unverified_header(tokens["access_token"])["typ"] == "at+jwt"


def test_a_partner_claim_is_released_with_the_groups_scope(oidc_provider: OIDCProvider) -> None:
    tokens = oidc_provider.code_flow_tokens("partner-staff")

    claims = _verify(oidc_provider, tokens["id_token"], audience=STAFF_CLIENT_ID)
    assert claims["partner"] == "acme"
    assert claims["groups"] == ["marketplace-partner-staff"]


def test_acr_comes_from_the_account(oidc_provider: OIDCProvider) -> None:
    oidc_provider.set_account(
        "acr-probe",
        claims={"email": "acr@example.com", "email_verified": True, "groups": []},
        amr=["pwd", "hwk"],
        acr="urn:marketplace:acr:mfa",
    )

    tokens = oidc_provider.code_flow_tokens("acr-probe")

    claims = _verify(oidc_provider, tokens["id_token"], audience=STAFF_CLIENT_ID)
    assert claims["acr"] == "urn:marketplace:acr:mfa"
    assert claims["amr"] == ["pwd", "hwk"]


def test_a_wrong_password_shows_the_form_again(oidc_provider: OIDCProvider) -> None:
    with pytest.raises(OIDCError) as refused:
        oidc_provider.authorize("staff-ops", password="wrong")

    assert refused.value.status == 401
    assert refused.value.body == "Wrong login or password."


def test_pkce_is_enforced_at_the_token_endpoint(oidc_provider: OIDCProvider) -> None:
    answer = oidc_provider.authorize("staff-ops")

    with pytest.raises(OIDCError) as refused:
        oidc_provider.exchange_code(answer.code, code_verifier=answer.code_verifier[::-1])

    assert refused.value.status == 400
    assert refused.value.error == "invalid_grant"


def test_an_authorization_request_without_pkce_is_refused(oidc_provider: OIDCProvider) -> None:
    response = requests.get(
        oidc_provider.discovery()["authorization_endpoint"],
        params={
            "client_id": STAFF_CLIENT_ID,
            "response_type": "code",
            "scope": "openid",
            "redirect_uri": "http://testserver/oidc/callback/",
            "state": "s",
        },
        allow_redirects=False,
        timeout=5,
    )

    assert response.status_code == 303
    assert "error=invalid_request" in response.headers["Location"]
    assert "state=s" in response.headers["Location"]


def test_rotation_changes_the_kid_of_new_tokens_and_keeps_the_session(
    oidc_provider: OIDCProvider,
) -> None:
    first = oidc_provider.authorize("staff-ops")
    before = oidc_provider.exchange_code(first.code, code_verifier=first.code_verifier)
    old_kid = jwt.get_unverified_header(before["id_token"])["kid"]

    new_kid = oidc_provider.rotate()

    assert new_kid != old_kid
    kids = [key["kid"] for key in oidc_provider.jwks()["keys"]]
    assert kids[0] == new_kid
    assert old_kid in kids
    # Silent renewal in the session of before the rotation.
    renewed = oidc_provider.authorize(session=first.session, prompt="none")
    after = oidc_provider.exchange_code(renewed.code, code_verifier=renewed.code_verifier)
    assert jwt.get_unverified_header(after["id_token"])["kid"] == new_kid
    assert _verify(oidc_provider, after["id_token"], audience=STAFF_CLIENT_ID)["sub"] == "staff-ops"
    assert jwt.get_unverified_header(oidc_provider.access_token("buyer"))["kid"] == new_kid


def test_sign_makes_arbitrary_and_alg_confused_tokens(oidc_provider: OIDCProvider) -> None:
    expired = oidc_provider.sign({"sub": "staff-ops", "aud": "someone-else", "exp": 1})
    confused = oidc_provider.sign({"sub": "staff-ops"}, key="hs256-with-public")

    claims = _verify_without_checks(oidc_provider, expired)
    assert claims == {"sub": "staff-ops", "aud": "someone-else", "exp": 1}
    assert jwt.get_unverified_header(confused)["alg"] == "HS256"


def _verify_without_checks(provider: OIDCProvider, token: str) -> dict:
    signing_key = jwt.PyJWKClient(provider.discovery()["jwks_uri"]).get_signing_key_from_jwt(token)
    return jwt.decode(
        token, signing_key, algorithms=["RS256"], options={"verify_exp": False, "verify_aud": False}
    )


def test_access_token_is_the_providers_jwt_for_the_api(oidc_provider: OIDCProvider) -> None:
    token = oidc_provider.access_token("buyer", expires_in=120)

    claims = _verify(oidc_provider, token, audience=API_AUDIENCE)
    assert claims["sub"] == "buyer"
    assert claims["aud"] == API_AUDIENCE
    assert claims["client_id"] == STAFF_CLIENT_ID
    assert claims["scope"] == "openid email"
    assert claims["exp"] - claims["iat"] == 120
    other = oidc_provider.access_token("buyer", audience="https://elsewhere.test")
    assert jwt.decode(other, options={"verify_signature": False})["aud"] == "https://elsewhere.test"


def test_a_disabled_account_fails_silent_renewal_with_login_required(
    oidc_provider: OIDCProvider,
) -> None:
    # An account of its own: the provider is shared by the whole session.
    claims = {"email": "leaver@example.com", "email_verified": True, "groups": []}
    oidc_provider.set_account("leaver", claims=claims)
    signed_in = oidc_provider.authorize("leaver")
    assert oidc_provider.authorize(session=signed_in.session, prompt="none").code

    oidc_provider.set_account("leaver", claims=claims, disabled=True)
    renewal = oidc_provider.authorize(session=signed_in.session, prompt="none")

    assert renewal.params["error"] == "login_required"
    assert renewal.params["state"] == renewal.state


def test_prompt_none_without_a_session_is_login_required(oidc_provider: OIDCProvider) -> None:
    assert oidc_provider.authorize(prompt="none").params["error"] == "login_required"


def test_stats_count_jwks_fetches_and_token_requests(oidc_provider: OIDCProvider) -> None:
    before = oidc_provider.stats()

    oidc_provider.jwks()
    oidc_provider.code_flow_tokens("buyer")

    after = oidc_provider.stats()
    assert after["jwks_fetches"] == before["jwks_fetches"] + 1
    assert after["token_requests"] == before["token_requests"] + 1


def test_the_control_api_needs_the_token(oidc_provider: OIDCProvider) -> None:
    response = requests.get(f"{oidc_provider.issuer}/__test__/stats", timeout=5)

    assert response.status_code == 401


class _RelyingParty(http.server.BaseHTTPRequestHandler):
    """Stands where the relying party's pages would be: answers any GET with 200."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(b"relying party")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def relying_party() -> Iterator[str]:
    # A listening loopback server rather than a routed http://testserver/: Chromium fails a
    # navigation that page.goto starts towards a name that does not resolve, routed or not.
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RelyingParty)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.browser
def test_a_browser_signs_in_on_the_providers_page_and_signs_out_without_a_click(
    oidc_provider: OIDCProvider, browser: Browser, relying_party: str
) -> None:
    callback = oidc_provider.allow_live_server(relying_party)
    context = browser.new_context()
    page = context.new_page()
    try:
        request = oidc_provider.authorization_request(redirect_uri=callback)
        page.goto(request.url)
        page.fill("input[name=login]", "staff-ops")
        page.fill("input[name=password]", PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(f"{callback}?**")
        query = parse_qs(urlsplit(page.url).query)
        assert query["state"] == [request.state]
        tokens = oidc_provider.exchange_code(
            query["code"][0], code_verifier=request.code_verifier, redirect_uri=callback
        )

        page.goto(
            oidc_provider.end_session_url(
                id_token_hint=tokens["id_token"],
                post_logout_redirect_uri=f"{relying_party}/",
                state="bye",
            )
        )
        page.wait_for_url(f"{relying_party}/?state=bye")

        silent = oidc_provider.authorization_request(redirect_uri=callback, prompt="none")
        page.goto(silent.url)
        page.wait_for_url(f"{callback}?**")
        assert parse_qs(urlsplit(page.url).query)["error"] == ["login_required"]
    finally:
        context.close()
