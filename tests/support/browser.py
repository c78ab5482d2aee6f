"""Headless Chromium, driven with Playwright's sync API, for tests that use the admin the way
staff do. The browser is Debian's package; Playwright's own browser downloads are not used."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright
from pytest_django.live_server_helper import LiveServer

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium keeps trying to reach Google's services and
# stalls on a closed network.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DEFAULT_TIMEOUT_MS = 10_000

_call_failed = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    # Lets the page fixture know, at teardown, whether the test itself failed.
    report = yield
    if report.when == "call":
        item.stash[_call_failed] = report.failed
    return report


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"Browser tests need Chromium at {CHROMIUM}: install Debian's package with "
            "`apt-get install -y chromium` (the project's test script does), or deselect them "
            "with `-m 'not browser'`.",
            pytrace=False,
        )
    # Playwright's sync API runs an asyncio loop in this thread and leaves it marked as running
    # between calls, for as long as Playwright is started. Django then takes every ORM call from
    # this thread (fixtures, factories, the test's own checks) for one made inside a coroutine
    # and raises SynchronousOnlyOperation. Nothing async touches the database here, so the check
    # is lifted for exactly as long as the loop lives, and put back as it was.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
            )
            try:
                yield chromium
            finally:
                chromium.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def page(
    browser: Browser, live_server: LiveServer, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Page]:
    """A fresh browser context (no cookies) on the live server; relative URLs go to it.

    When the test fails, a full-page screenshot is left in the test's tmp_path.
    """
    context = browser.new_context(base_url=live_server.url)
    context.set_default_timeout(DEFAULT_TIMEOUT_MS)
    page = context.new_page()
    try:
        yield page
        if request.node.stash.get(_call_failed, False):
            screenshot = tmp_path / "failure.png"
            page.screenshot(path=screenshot, full_page=True)
            print(f"screenshot of the failed page ({page.url}): {screenshot}")
    finally:
        context.close()


def admin_log_in(page: Page, *, email: str, password: str) -> None:
    """Logs in through the admin's login form and waits for the admin index."""
    page.goto("/admin/login/?next=/admin/")
    page.fill("#id_username", email)
    page.fill("#id_password", password)
    page.click("input[type=submit]")
    page.wait_for_url("**/admin/")
