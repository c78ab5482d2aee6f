"""Security revokes a buyer's preview from the admin, in a real browser: the sessions list, the
Revoke action with its reason, the session shown ended, and its link answering 410."""

import urllib.error
import urllib.request

import pytest
from playwright.sync_api import Page, expect
from pytest_django.live_server_helper import LiveServer

from marketplace.models import User
from marketplace.roles import SECURITY
from previews.models import EndReason, MaterialKind, PreviewSession, SessionStatus
from previews.services import preview_open
from tests.conftest import STAFF_PASSWORD, _staff
from tests.previews.factories import previewable_sku
from tests.support.browser import admin_log_in

pytestmark = pytest.mark.browser


def _status_of(live_server: LiveServer, path: str) -> int:
    try:
        # S310: the URL is the live server's own http:// address.
        with urllib.request.urlopen(f"{live_server.url}{path}", timeout=10) as response:  # noqa: S310
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_security_revokes_a_preview_and_sees_it_ended(
    page: Page, live_server: LiveServer, buyer: User
) -> None:
    security = _staff("security@example.com", SECURITY)
    sku = previewable_sku(MaterialKind.SAMPLE, slug="preview-kit")
    preview = preview_open(buyer=buyer, sku_slug=sku.slug)
    link = f"/previews/{preview.token}/"
    assert _status_of(live_server, link) == 200

    admin_log_in(page, email=security.email, password=STAFF_PASSWORD)
    page.goto("/admin/previews/previewsession/")
    row = page.locator("#result_list tbody tr", has_text="buyer@example.com")
    expect(row).to_contain_text("Ready")
    row.locator("input.action-select").check()
    page.select_option("select[name=action]", "revoke")
    page.click("button[name=index]")  # "Go": the page that asks why
    page.fill("#id_reason", "the link was posted publicly")
    page.click("input[name=apply]")

    expect(page.locator("ul.messagelist li.success")).to_have_text("1 session(s) revoked.")
    row = page.locator("#result_list tbody tr", has_text="buyer@example.com")
    expect(row).to_contain_text("Ended")
    expect(row).to_contain_text("Revoked")
    session = PreviewSession.objects.get(pk=preview.session.pk)
    assert (session.status, session.end_reason) == (SessionStatus.ENDED, EndReason.REVOKED)
    assert session.end_detail == "the link was posted publicly"
    assert _status_of(live_server, link) == 410
