"""A Content-Security-Policy on every answer, which the admin, the API docs and the local pages
live with: nothing they need is blocked, and a script injected into them does not run."""

import json
import os
import subprocess
import sys

import pytest
from django.test import Client
from playwright.sync_api import ConsoleMessage, Page, expect
from playwright.sync_api import Error as PlaywrightError
from pytest_django.live_server_helper import LiveServer

from marketplace.roles import SECURITY
from tests.conftest import STAFF_PASSWORD, _staff
from tests.support.browser import admin_log_in


def _policy(response) -> dict[str, str]:
    header = response.headers["Content-Security-Policy"]
    return dict(part.strip().split(" ", 1) for part in header.split(";") if part.strip())


@pytest.mark.parametrize("path", ["/", "/api/v1/skus", "/admin/login/", "/api/docs/"])
@pytest.mark.django_db
def test_every_kind_of_answer_carries_the_policy(client: Client, path: str) -> None:
    policy = _policy(client.get(path))

    assert policy["default-src"] == "'self'"
    # A nonce is added only to an answer whose page has a script of its own (the local
    # checkout page); nothing else runs inline.
    assert policy["script-src"] == "'self'"
    assert policy["object-src"] == "'none'"
    assert policy["frame-ancestors"] == "'none'"
    assert policy["form-action"] == "'self'"


def test_payment_origins_join_the_policy_where_a_page_reaches_them() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django; django.setup(); from django.conf import settings as s; "
            "import json; print(json.dumps(s.CONTENT_SECURITY_POLICY['DIRECTIVES'], default=str))",
        ],
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings.test",
            "MARKETPLACE_ALLOWED_PAYMENT_ORIGINS": "https://checkout.stripe.com",
        },
        capture_output=True,
        text=True,
        check=True,
    )
    directives = json.loads(result.stdout)

    for name in ("connect-src", "form-action", "frame-src"):
        assert directives[name] == ["'self'", "https://checkout.stripe.com"], name
    assert directives["script-src"][0] == "'self'"
    assert "https://checkout.stripe.com" not in directives["script-src"]


def _violations(page: Page) -> list[str]:
    found: list[str] = []

    def listen(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            found.append(message.text)

    page.on("console", listen)
    return found


@pytest.mark.browser
def test_the_admin_works_under_the_policy_and_an_injected_script_does_not_run(
    page: Page, live_server: LiveServer
) -> None:
    violations = _violations(page)
    security = _staff("security@example.com", SECURITY)

    admin_log_in(page, email=security.email, password=STAFF_PASSWORD)
    page.click("text=Audit events")
    expect(page.locator("#changelist-filter")).to_be_visible()
    page.goto("/admin/marketplace/user/")
    expect(page.locator("#result_list")).to_be_visible()
    page.locator("#result_list tbody tr th a").first.click()
    expect(page.locator("#user_form")).to_be_visible()
    assert violations == []

    # What an attacker's markup would do: an inline script without the answer's nonce.
    with pytest.raises(PlaywrightError, match="violates the following Content Security Policy"):
        page.add_script_tag(content="window.injected = true;")

    assert page.evaluate("window.injected === undefined")


@pytest.mark.browser
def test_the_api_docs_render_under_the_policy(page: Page, live_server: LiveServer) -> None:
    violations = _violations(page)

    page.goto("/api/docs/")

    expect(page.locator(".swagger-ui .info .title")).to_contain_text("Marketplace API")
    expect(page.locator(".opblock").first).to_be_visible()
    assert violations == []
