"""Staff sign-in through the real provider process (tests/support/oidc.py), driven over HTTP:
the Django test client is the browser on our side, a `requests` session the browser at the
provider (its login page, its session cookie for silent renewal). The browser test proper is
test_staff_login_browser.py."""

import re
import time
from collections.abc import Iterator
from io import StringIO
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import pytest
import requests
from django.contrib.auth.models import Group
from django.core.management import CommandError, call_command
from django.test import Client

from accounts.models import Identity
from accounts.oidc import LAST_SEEN, SIGNED_IN_AT
from audit.models import AuditEvent
from marketplace import oidc
from marketplace.models import User
from marketplace.roles import CONTENT_OPS, PARTNER_STAFF, SUPPORT
from tests.support.oidc import PASSWORD, OIDCProvider

pytestmark = pytest.mark.django_db

ROLE_MAP = {
    "marketplace-content-ops": CONTENT_OPS,
    "marketplace-support": SUPPORT,
    "marketplace-partner-staff": PARTNER_STAFF,
}
CALLBACK = "http://testserver/oidc/callback/"
_FORM = re.compile(r'<form method="post" action="(/interaction/[^"]+/login)"')


@pytest.fixture
def provider(oidc_provider: OIDCProvider, settings: Any) -> Iterator[OIDCProvider]:
    settings.OIDC_ISSUER = oidc_provider.issuer
    settings.OIDC_CLIENT_ID = oidc_provider.client_id
    settings.OIDC_CLIENT_SECRET = oidc_provider.client_secret
    settings.OIDC_SCOPES = "openid email profile groups"
    settings.OIDC_ROLE_MAP = ROLE_MAP
    settings.OIDC_PARTNER_CLAIM = "partner"
    settings.OIDC_REQUIRE_MFA = True
    oidc.forget()
    yield oidc_provider
    oidc.forget()


def account(provider: OIDCProvider, name: str, **claims: Any) -> str:
    """A provider account of this test's own (accounts changed by a test stay changed)."""
    base = {"email": f"{name}@example.com", "email_verified": True}
    base["groups"] = ["marketplace-content-ops"]
    base.update(claims)
    amr = base.pop("amr", ["pwd", "otp"])
    disabled = base.pop("disabled", False)
    provider.set_account(name, claims=base, amr=amr, disabled=disabled)
    return name


def at_provider(url: str, browser: requests.Session, login: str | None) -> dict[str, str]:
    """Follows `url` at the provider as a browser would, signing in as `login` if its login
    page appears, up to the redirect back to our callback; returns that redirect's query."""
    response = browser.get(url, allow_redirects=False, timeout=10)
    for _ in range(20):
        if response.is_redirect:
            location = urljoin(response.url, response.headers["Location"])
            if location.startswith(CALLBACK):
                return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
            response = browser.get(location, allow_redirects=False, timeout=10)
            continue
        form = _FORM.search(response.text)
        assert form is not None, response.text[:500]
        assert login is not None, "the provider asked to sign in again"
        response = browser.post(
            urljoin(response.url, form.group(1)),
            data={"login": login, "password": PASSWORD},
            allow_redirects=False,
            timeout=10,
        )
        login = None
    raise AssertionError("the provider never sent the browser back")


def sign_in(
    client: Client, login: str, browser: requests.Session | None = None
) -> tuple[Any, dict[str, str], requests.Session]:
    browser = browser or requests.Session()
    started = client.get("/oidc/authenticate/")
    assert started.status_code == 302, started.content
    query = at_provider(started["Location"], browser, login)
    return client.get("/oidc/callback/", query), query, browser


def refused_code(response: Any) -> str:
    assert response.status_code in (403, 503), response.status_code
    match = re.search(r'data-code="([^"]+)"', response.content.decode())
    assert match is not None, response.content[:500]
    return match.group(1)


def events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("id"))


def test_the_authorization_request_carries_pkce_state_and_nonce(provider: OIDCProvider):
    response = Client().get("/oidc/authenticate/")

    query = parse_qs(urlsplit(response["Location"]).query)
    assert response["Location"].startswith(oidc.metadata().authorization_endpoint)
    assert query["code_challenge_method"] == ["S256"]
    assert len(query["code_challenge"][0]) >= 43
    assert query["state"][0]
    assert query["nonce"][0]
    assert query["client_id"] == [provider.client_id]


def test_a_staff_member_signs_in_with_roles_from_the_provider(provider: OIDCProvider):
    name = account(provider, "ops-one", groups=["marketplace-content-ops", "not-a-role"])
    client = Client()

    response, _, _ = sign_in(client, name)

    assert response.status_code == 302
    assert response["Location"] == "/admin/"
    identity = Identity.objects.select_related("user").get(subject=name)
    user = identity.user
    assert (identity.issuer, user.email, user.is_staff) == (
        provider.issuer,
        "ops-one@example.com",
        True,
    )
    assert not user.has_usable_password()
    assert list(user.groups.values_list("name", flat=True)) == [CONTENT_OPS]
    assert identity.roles == [CONTENT_OPS]
    assert client.get("/admin/").status_code == 200
    (login,) = events("staff.login")
    assert login.actor_id == str(user.uuid)
    assert login.data["method"] == "oidc"
    assert login.data["new_account"] is True
    assert "otp" in login.data["amr"]
    (roles,) = events("staff.roles_changed")
    assert roles.data["added"] == [CONTENT_OPS]
    assert roles.data["removed"] == []


def test_an_email_changed_at_the_provider_follows_the_same_account(provider: OIDCProvider):
    name = account(provider, "ops-renamed")
    sign_in(Client(), name)
    account(provider, name, email="ops-new-name@example.com")

    response, _, _ = sign_in(Client(), name)

    assert response.status_code == 302
    assert User.objects.filter(identities__subject=name).get().email == ("ops-new-name@example.com")
    assert User.objects.filter(email__startswith="ops-re").count() == 0


def test_an_account_here_with_the_same_email_is_not_taken_over(provider: OIDCProvider):
    existing = User.objects.create_user(email="victim@example.com", is_staff=True)
    name = account(provider, "attacker", email="victim@example.com")

    response, _, _ = sign_in(Client(), name)

    assert refused_code(response) == "email_in_use"
    assert not Identity.objects.exists()
    existing.refresh_from_db()
    assert not existing.groups.exists()
    (refusal,) = events("staff.login_refused")
    assert refusal.data["code"] == "email_in_use"
    assert refusal.subject_id == f"{provider.issuer}#{name}"


@pytest.mark.parametrize(
    ("claims", "code"),
    [
        ({"groups": ["some-other-team"]}, "no_role"),
        ({"groups": []}, "no_role"),
        ({"email_verified": False}, "email_unverified"),
        ({"amr": ["pwd"]}, "mfa_required"),
        ({"groups": ["marketplace-partner-staff"]}, "no_partner"),
    ],
)
def test_refused_sign_ins_create_nobody(provider: OIDCProvider, claims: dict[str, Any], code: str):
    name = account(provider, f"refused-{code}-{len(claims)}", **claims)

    response, _, _ = sign_in(Client(), name)

    assert refused_code(response) == code
    assert not User.objects.exists()
    assert not Identity.objects.exists()
    assert [e.data["code"] for e in events("staff.login_refused")] == [code]
    assert not events("staff.login")


def test_without_required_mfa_a_password_only_sign_in_passes(provider: OIDCProvider, settings: Any):
    settings.OIDC_REQUIRE_MFA = False
    name = account(provider, "ops-pwd-only", amr=["pwd"])

    response, _, _ = sign_in(Client(), name)

    assert response.status_code == 302


def test_a_partner_staff_member_is_bound_to_their_partner(provider: OIDCProvider):
    name = account(provider, "acme-staff", groups=["marketplace-partner-staff"], partner="acme")

    response, _, _ = sign_in(Client(), name)

    assert response.status_code == 302
    identity = Identity.objects.get(subject=name)
    assert (identity.partner_slug, identity.roles) == ("acme", [PARTNER_STAFF])


def test_a_tampered_state_is_refused(provider: OIDCProvider):
    name = account(provider, "ops-state")
    client = Client()
    started = client.get("/oidc/authenticate/")
    query = at_provider(started["Location"], requests.Session(), name)

    response = client.get("/oidc/callback/", {**query, "state": query["state"] + "x"})

    assert refused_code(response) == "state_mismatch"
    assert not User.objects.exists()


def test_a_replayed_authorization_code_is_refused(provider: OIDCProvider):
    name = account(provider, "ops-replay")
    first, query, _ = sign_in(Client(), name)
    assert first.status_code == 302
    # Another browser starts its own sign-in (a state of its own) and presents the old code.
    thief = Client()
    started = thief.get("/oidc/authenticate/")
    state = parse_qs(urlsplit(started["Location"]).query)["state"][0]

    response = thief.get("/oidc/callback/", {"code": query["code"], "state": state})

    assert refused_code(response) == "code_rejected"
    assert "_auth_user_id" not in thief.session
    assert [e.data["code"] for e in events("staff.login_refused")] == ["code_rejected"]


def test_logins_keep_working_across_a_key_rotation(provider: OIDCProvider):
    name = account(provider, "ops-rotation")
    assert sign_in(Client(), name)[0].status_code == 302

    provider.rotate("RS256")
    response, _, _ = sign_in(Client(), name)

    assert response.status_code == 302


def renew(client: Client, browser: requests.Session) -> Any:
    """Lets the session's renewal fall due and follows it: the next admin page sends the
    browser to the provider with prompt=none, and the provider straight back."""
    session = client.session
    session["oidc_id_token_expiration"] = time.time() - 1
    session.save()
    response = client.get("/admin/")
    assert response.status_code == 302, response.status_code
    assert "prompt=none" in response["Location"]
    return client.get("/oidc/callback/", at_provider(response["Location"], browser, None))


def test_renewal_syncs_the_roles_from_the_provider(provider: OIDCProvider):
    name = account(provider, "ops-renew", groups=["marketplace-content-ops"])
    client = Client()
    _, _, browser = sign_in(client, name)
    account(provider, name, groups=["marketplace-support"])

    response = renew(client, browser)

    assert response.status_code == 302
    user = Identity.objects.get(subject=name).user
    assert list(user.groups.values_list("name", flat=True)) == [SUPPORT]
    assert client.get("/admin/").status_code == 200
    changed = events("staff.roles_changed")[-1]
    assert (changed.data["added"], changed.data["removed"]) == ([SUPPORT], [CONTENT_OPS])


def test_a_role_removed_at_the_provider_ends_access_at_renewal(provider: OIDCProvider):
    name = account(provider, "ops-demoted")
    client = Client()
    _, _, browser = sign_in(client, name)
    account(provider, name, groups=[])

    response = renew(client, browser)

    assert refused_code(response) == "no_role"
    assert "_auth_user_id" not in client.session
    assert client.get("/admin/").status_code == 302
    assert events("staff.logout")[-1].data["reason"] == "refused"
    identity = Identity.objects.select_related("user").get(subject=name)
    assert not identity.user.groups.exists()
    assert identity.roles == []
    withdrawn = events("staff.roles_changed")[-1]
    assert (withdrawn.data["added"], withdrawn.data["removed"]) == ([], [CONTENT_OPS])


def test_an_account_disabled_at_the_provider_loses_access_at_renewal(provider: OIDCProvider):
    name = account(provider, "ops-disabled")
    client = Client()
    _, _, browser = sign_in(client, name)
    account(provider, name, disabled=True)

    response = renew(client, browser)

    assert refused_code(response) == "login_required"
    assert "_auth_user_id" not in client.session
    assert events("staff.logout")[-1].data["reason"] == "login_required"


def test_a_session_ends_at_its_lifetime_whatever_the_renewals(
    provider: OIDCProvider, settings: Any
):
    name = account(provider, "ops-lifetime")
    client = Client()
    sign_in(client, name)
    session = client.session
    session[SIGNED_IN_AT] = time.time() - settings.STAFF_SESSION_SECONDS - 1
    session.save()

    response = client.get("/admin/")

    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")
    assert events("staff.logout")[-1].data["reason"] == "session_lifetime"


@pytest.mark.parametrize("path", ["/oidc/logout/", "/admin/logout/"])
def test_logout_ends_the_session_here_and_at_the_provider(provider: OIDCProvider, path: str):
    name = account(provider, f"ops-logout{path.replace('/', '-')}")
    client = Client()
    _, _, browser = sign_in(client, name)
    id_token = client.session["oidc_id_token"]

    response = client.post(path)

    assert response.status_code == 302
    location = response["Location"]
    assert location.startswith(oidc.metadata().end_session_endpoint)
    assert parse_qs(urlsplit(location).query)["id_token_hint"] == [id_token]
    assert client.get("/admin/").status_code == 302
    assert events("staff.logout")[-1].data["reason"] == "signed_out"
    # At the provider: the logout (its page submits itself in a browser) ends its session,
    # so prompt=none now fails.
    query = parse_qs(urlsplit(location).query)
    provider.end_session(
        browser,
        id_token_hint=query["id_token_hint"][0],
        post_logout_redirect_uri=query["post_logout_redirect_uri"][0],
    )
    started = client.get("/oidc/authenticate/")
    query = at_provider(started["Location"] + "&prompt=none", browser, None)
    assert query.get("error") == "login_required"


def test_admin_pages_let_their_sign_out_form_reach_the_provider(provider: OIDCProvider):
    client = Client()
    sign_in(client, account(provider, "ops-csp"))

    policy = client.get("/admin/")["Content-Security-Policy"]

    form_action = next(d for d in policy.split(";") if d.strip().startswith("form-action"))
    assert provider.issuer in form_action.split()
    assert provider.issuer not in Client().get("/api/v1/skus")["Content-Security-Policy"]


def test_the_admin_login_page_offers_the_provider(provider: OIDCProvider):
    page = Client().get("/admin/login/?next=/admin/")

    assert page.status_code == 200
    assert b'id="oidc-login-button"' in page.content
    assert b"/oidc/authenticate/?next=/admin/" in page.content


def test_a_provider_that_is_down_is_a_clear_503(settings: Any):
    settings.OIDC_ISSUER = "http://127.0.0.1:9"
    settings.OIDC_CLIENT_ID = "marketplace-staff"
    settings.OIDC_TIMEOUT_SECONDS = 2
    oidc.forget()
    try:
        response = Client().get("/oidc/authenticate/")
    finally:
        oidc.forget()

    assert refused_code(response) == "provider_unavailable"
    assert response.status_code == 503


def test_groups_made_by_hand_are_left_alone(provider: OIDCProvider):
    name = account(provider, "ops-handmade")
    sign_in(Client(), name)
    user = Identity.objects.get(subject=name).user
    user.groups.add(Group.objects.create(name="Newsletter editors"))

    sign_in(Client(), name)

    assert sorted(user.groups.values_list("name", flat=True)) == [
        CONTENT_OPS,
        "Newsletter editors",
    ]


def test_an_idle_session_ends(provider: OIDCProvider, settings: Any):
    name = account(provider, "ops-idle")
    client = Client()
    sign_in(client, name)
    assert client.get("/admin/").status_code == 200
    session = client.session
    session[LAST_SEEN] = time.time() - settings.STAFF_SESSION_IDLE_SECONDS - 1
    session.save()

    response = client.get("/admin/")

    assert response.status_code == 302
    assert events("staff.logout")[-1].data["reason"] == "idle"


def test_a_forged_callback_link_neither_signs_out_nor_shows_its_text(provider: OIDCProvider):
    name = account(provider, "ops-forged-link")
    client = Client()
    sign_in(client, name)

    error = client.get(
        "/oidc/callback/",
        {"error": "access_denied", "error_description": "Call +1 555 0100", "state": "forged"},
    )
    bad_state = client.get("/oidc/callback/", {"code": "stolen", "state": "forged"})

    assert refused_code(error) == "state_mismatch"
    assert "555" not in error.content.decode()
    assert refused_code(bad_state) == "state_mismatch"
    assert client.get("/admin/").status_code == 200
    assert not events("staff.logout")


def test_the_providers_own_error_text_is_not_shown(provider: OIDCProvider):
    client = Client()
    started = client.get("/oidc/authenticate/")
    state = parse_qs(urlsplit(started["Location"]).query)["state"][0]

    response = client.get(
        "/oidc/callback/",
        {"error": "access_denied", "error_description": "<b>Call us</b>", "state": state},
    )

    assert refused_code(response) == "access_denied"
    assert "Call us" not in response.content.decode()


@pytest.mark.parametrize(
    "query", [{}, {"state": "forged"}, {"code": "x"}, {"error": "login_required"}]
)
def test_a_callback_link_without_this_sessions_state_signs_nobody_out(
    provider: OIDCProvider, query: dict[str, str]
):
    client = Client()
    sign_in(client, account(provider, "ops-link-" + "-".join(query) or "none"))

    client.get("/oidc/callback/", query)

    assert client.get("/admin/").status_code == 200
    assert not events("staff.logout")


def test_the_password_form_never_redeems_a_code(provider: OIDCProvider):
    before = provider.stats()["token_requests"]

    response = Client().post(
        "/admin/login/?code=stolen&state=forged",
        {"username": "ops@example.com", "password": "guess"},
    )

    assert response.status_code == 200  # the form again, refusing the password
    assert provider.stats()["token_requests"] == before
    assert not User.objects.exists()


def test_claims_that_do_not_fit_are_refused(provider: OIDCProvider):
    name = account(provider, "ops-bad-partner", groups=["marketplace-partner-staff"])
    provider.set_account(
        name,
        claims={
            "email": f"{name}@example.com",
            "email_verified": True,
            "groups": ["marketplace-partner-staff"],
            "partner": "../../etc",
        },
        amr=["pwd", "otp"],
    )

    response, _, _ = sign_in(Client(), name)

    assert refused_code(response) == "invalid_claims"
    assert not User.objects.exists()


def test_an_operator_links_an_existing_account_and_its_sign_in_reaches_it(
    provider: OIDCProvider,
):
    existing = User.objects.create_user(email="made-by-hand@example.com", is_staff=True)
    name = account(provider, "ops-linked", email="made-by-hand@example.com")
    assert refused_code(sign_in(Client(), name)[0]) == "email_in_use"

    call_command("identity_link", "made-by-hand@example.com", name, stdout=StringIO())
    response, _, _ = sign_in(Client(), name)

    assert response.status_code == 302
    assert Identity.objects.get(subject=name).user == existing
    assert events("identity.linked")[-1].data == {"issuer": provider.issuer, "subject": name}
    with pytest.raises(CommandError, match="linked to an account already"):
        call_command("identity_link", "made-by-hand@example.com", name, stdout=StringIO())


def test_a_superuser_is_not_linked_to_a_provider_identity(provider: OIDCProvider):
    User.objects.create_superuser(email="root@example.com", password="x" * 20)

    with pytest.raises(CommandError, match="superuser"):
        call_command("identity_link", "root@example.com", "someone", stdout=StringIO())

    assert not Identity.objects.exists()
    assert not events("identity.linked")
