"""Staff sign-in through the provider, in Chromium: the admin's sign-in page, the provider's own
login page, the silent renewal that ends a session whose role is gone, a key rotation between
two sign-ins, and the sign-out that ends the session at the provider too (its logout page
submits itself). test_staff_login.py covers the same flows, and the refusals, over HTTP.

The browser talks to the live server (http://localhost:PORT), never to http://testserver:
Chromium fails a navigation whose redirects end at a host that does not resolve, so the live
server's callback is registered with the provider's staff client (`allow_live_server`)."""

import re
import time
from collections.abc import Iterator
from importlib import import_module
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
from django.conf import settings as django_settings
from playwright.sync_api import Browser, Page, expect
from pytest_django.live_server_helper import LiveServer

from accounts.models import Identity
from audit.models import AuditEvent
from marketplace import oidc
from marketplace.roles import CONTENT_OPS, SUPPORT, roles_sync
from tests.support.browser import DEFAULT_TIMEOUT_MS
from tests.support.oidc import PASSWORD, OIDCProvider

pytestmark = pytest.mark.browser

ROLE_MAP = {"marketplace-content-ops": CONTENT_OPS, "marketplace-support": SUPPORT}
SIGN_IN_BUTTON = "Sign in with the company's identity provider"


@pytest.fixture
def provider(
    oidc_provider: OIDCProvider, live_server: LiveServer, settings: Any
) -> Iterator[OIDCProvider]:
    """The test provider as this platform's identity provider, with the live server's callback
    and post-logout pages registered with its staff client."""
    settings.OIDC_ISSUER = oidc_provider.issuer
    settings.OIDC_CLIENT_ID = oidc_provider.client_id
    settings.OIDC_CLIENT_SECRET = oidc_provider.client_secret
    settings.OIDC_SCOPES = "openid email profile groups"
    settings.OIDC_ROLE_MAP = ROLE_MAP
    settings.OIDC_PARTNER_CLAIM = "partner"
    settings.OIDC_REQUIRE_MFA = True
    oidc_provider.allow_live_server(live_server.url)
    roles_sync()  # a live-server test starts from an emptied database: no role groups yet
    oidc.forget()
    yield oidc_provider
    oidc.forget()


def account(provider: OIDCProvider, name: str, **claims: Any) -> str:
    """A provider account of this test's own (accounts changed by a test stay changed)."""
    base: dict[str, Any] = {
        "email": f"{name}@example.com",
        "email_verified": True,
        "groups": ["marketplace-content-ops"],
        **claims,
    }
    provider.set_account(name, claims=base, amr=["pwd", "otp"])
    return name


def at_provider_login(page: Page, provider: OIDCProvider) -> None:
    """Waits for the provider's own login page."""
    page.wait_for_url(f"{provider.issuer}/**")
    expect(page.locator("input[name=login]")).to_be_visible()


def sign_in(page: Page, provider: OIDCProvider, live_server: LiveServer, login: str) -> None:
    """From an admin page while signed out, through the provider's login page, to the index."""
    page.goto("/admin/")
    expect(page).to_have_url(f"{live_server.url}/admin/login/?next=/admin/")
    page.get_by_role("link", name=SIGN_IN_BUTTON).click()
    at_provider_login(page, provider)
    page.fill("input[name=login]", login)
    page.fill("input[name=password]", PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{live_server.url}/admin/")


def session_of(page: Page) -> Any:
    """The Django session of the page's browser context (read as the server does)."""
    (key,) = [
        c["value"]
        for c in page.context.cookies()
        if c["name"] == django_settings.SESSION_COOKIE_NAME
    ]
    return import_module(django_settings.SESSION_ENGINE).SessionStore(session_key=key)


def csrf_token(page: Page) -> str:
    """The CSRF token of the admin page in `page` (its own "Log out" form carries one)."""
    return page.locator("input[name=csrfmiddlewaretoken]").first.input_value()


def events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("id"))


def test_a_staff_member_signs_in_on_the_providers_page(
    page: Page, live_server: LiveServer, provider: OIDCProvider
) -> None:
    name = account(provider, "browser-ops")

    sign_in(page, provider, live_server, name)

    expect(page.locator("#user-tools")).to_contain_text(f"{name}@example.com")
    expect(page.locator("#site-name")).to_have_text("Marketplace administration")
    user = Identity.objects.select_related("user").get(subject=name).user
    assert user.email == f"{name}@example.com"
    assert user.is_staff
    assert not user.has_usable_password()
    assert list(user.groups.values_list("name", flat=True)) == [CONTENT_OPS]
    (login,) = events("staff.login")
    assert (login.data["method"], login.data["new_account"]) == ("oidc", True)


def test_a_role_removed_at_the_provider_ends_the_session_at_renewal(
    page: Page, live_server: LiveServer, provider: OIDCProvider, settings: Any
) -> None:
    # Read by the callback (the live server's thread shares these settings) when it signs
    # the session in: the renewal is due a second later.
    settings.OIDC_RENEW_SECONDS = 1
    name = account(provider, "browser-demoted")
    sign_in(page, provider, live_server, name)
    expect(page.locator("#user-tools")).to_contain_text(f"{name}@example.com")
    account(provider, name, groups=[])
    time.sleep(max(0.0, session_of(page)["oidc_id_token_expiration"] - time.time()) + 0.1)
    authorize = oidc.metadata().authorization_endpoint
    authorizations: list[str] = []
    page.on(
        "request",
        lambda request: (
            authorizations.append(request.url) if request.url.startswith(f"{authorize}?") else None
        ),
    )

    page.goto("/admin/")

    # To the provider without a page of its own (its session is still there), straight back
    # to the callback, which refuses the claims and ends the session.
    expect(page.locator("[data-code]")).to_have_attribute("data-code", "no_role")
    assert page.url.startswith(f"{live_server.url}/oidc/callback/?")
    (renewal,) = authorizations
    assert parse_qs(urlsplit(renewal).query)["prompt"] == ["none"]
    assert events("staff.logout")[-1].data["reason"] == "refused"
    page.goto("/admin/")
    expect(page).to_have_url(f"{live_server.url}/admin/login/?next=/admin/")
    expect(page.get_by_role("link", name=SIGN_IN_BUTTON)).to_be_visible()


def test_a_second_sign_in_works_after_the_provider_rotates_its_key(
    page: Page, browser: Browser, live_server: LiveServer, provider: OIDCProvider
) -> None:
    name = account(provider, "browser-rotation")
    sign_in(page, provider, live_server, name)
    first_kid = jwt.get_unverified_header(session_of(page)["oidc_id_token"])["kid"]

    new_kid = provider.rotate("RS256")
    context = browser.new_context(base_url=live_server.url)
    context.set_default_timeout(DEFAULT_TIMEOUT_MS)
    try:
        second = context.new_page()
        sign_in(second, provider, live_server, name)

        expect(second.locator("#user-tools")).to_contain_text(f"{name}@example.com")
        assert new_kid != first_kid
        assert jwt.get_unverified_header(session_of(second)["oidc_id_token"])["kid"] == new_kid
    finally:
        context.close()
    # The first browser is still signed in.
    page.goto("/admin/")
    expect(page).to_have_url(f"{live_server.url}/admin/")


def test_signing_out_ends_the_session_here_and_at_the_provider(
    page: Page, live_server: LiveServer, provider: OIDCProvider
) -> None:
    name = account(provider, "browser-logout")
    sign_in(page, provider, live_server, name)
    id_token = session_of(page)["oidc_id_token"]

    # The sign-out is a POST to /oidc/logout/, with the CSRF token of the admin's page and the
    # browser's cookies; the browser then follows its redirect to the provider, whose logout
    # page submits itself and sends the browser back to the admin's sign-in page. (The admin's
    # own "Log out" is Django's admin:logout, which ends the session here only.)
    answer = page.request.post(
        "/oidc/logout/", headers={"X-CSRFToken": csrf_token(page)}, max_redirects=0
    )
    assert answer.status == 302, answer.text()[:500]
    location = answer.headers["location"]
    assert location.startswith(f"{oidc.metadata().end_session_endpoint}?")
    assert parse_qs(urlsplit(location).query)["id_token_hint"] == [id_token]
    page.goto(location)

    # The admin's login page redirects a signed-in member to the index: staying on it is
    # being signed out.
    expect(page).to_have_url(re.compile(rf"^{re.escape(live_server.url)}/admin/login/"))
    expect(page.get_by_role("link", name=SIGN_IN_BUTTON)).to_be_visible()
    assert events("staff.logout")[-1].data["reason"] == "signed_out"
    # The provider's session is gone too: signing in asks for the password again.
    page.get_by_role("link", name=SIGN_IN_BUTTON).click()
    at_provider_login(page, provider)


def test_a_sign_out_form_may_redirect_to_the_provider(
    page: Page, live_server: LiveServer, provider: OIDCProvider
) -> None:
    """The way a sign-out button does it: a form posted to /oidc/logout/, whose answer is a
    redirect to the provider, which the page's Content-Security-Policy must let through
    (`form-action` covers the redirects of a form's submission)."""
    name = account(provider, "browser-logout-form")
    sign_in(page, provider, live_server, name)

    page.evaluate(
        """token => {
            const form = document.createElement("form");
            form.method = "post";
            form.action = "/oidc/logout/";
            const input = document.createElement("input");
            input.type = "hidden";
            input.name = "csrfmiddlewaretoken";
            input.value = token;
            form.appendChild(input);
            document.body.appendChild(form);
            form.submit();
        }""",
        csrf_token(page),
    )

    expect(page).to_have_url(
        re.compile(rf"^{re.escape(live_server.url)}/admin/login/"), timeout=3_000
    )
    expect(page.get_by_role("link", name=SIGN_IN_BUTTON)).to_be_visible()
