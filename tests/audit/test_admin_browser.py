"""Security staff read the audit log in a real browser: filter it by action, open an event,
and verify the chain."""

import re

import pytest
from django.db import transaction
from playwright.sync_api import Page, expect
from pytest_django.live_server_helper import LiveServer

from audit.sealer import seal_all
from audit.services import audit_append
from marketplace.actors import Actor
from marketplace.models import User
from marketplace.roles import SECURITY
from tests.conftest import STAFF_PASSWORD, _staff
from tests.support.browser import admin_log_in

pytestmark = pytest.mark.browser


def test_security_filter_the_log_open_an_event_and_verify_the_chain(
    page: Page, live_server: LiveServer, buyer: User
) -> None:
    security = _staff("security@example.com", SECURITY)
    with transaction.atomic():
        audit_append(actor=Actor.system("test"), action="sku.activated", subject=("sku", 7))
        paid = audit_append(
            actor=Actor.of_user(buyer),
            action="order.paid",
            subject=("order", "o-1"),
            data={"amount": 1999, "currency": "EUR"},
        )
        audit_append(actor=Actor.service("worker"), action="license.issued", subject=("license", 1))
    seal_all()  # the list shows sequences, and the verify page counts sealed events

    admin_log_in(page, email=security.email, password=STAFF_PASSWORD)
    page.click("text=Audit events")
    expect(page.locator("#result_list tbody tr")).to_have_count(3)

    page.locator("#changelist-filter a", has_text="order.paid").click()
    rows = page.locator("#result_list tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("buyer@example.com")

    rows.first.locator("th a").click()  # the sequence links to the event
    expect(page).to_have_url(re.compile(rf"/admin/audit/auditevent/{paid.pk}/change/"))
    expect(page.locator(".field-data_pretty pre")).to_contain_text('"amount": 1999')
    expect(page.locator(".field-actor_user")).to_contain_text("buyer@example.com")
    expect(page.locator("input[type=submit]")).to_have_count(0)  # nothing to save

    page.click("#audit-subject-events")
    expect(page.locator("#result_list tbody tr")).to_have_count(1)
    page.click("#audit-verify")
    expect(page.locator("#audit-verify-status")).to_have_text("OK: the chain is intact.")
    expect(page.locator("#audit-verify-events")).to_have_text("3")
