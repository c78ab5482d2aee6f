"""Finance refunds an order in a real browser: a partial refund, then one for more than is left,
which is refused on the page."""

import re

import pytest
from playwright.sync_api import Page, expect
from pytest_django.live_server_helper import LiveServer

from marketplace.models import User
from marketplace.roles import FINANCE
from orders.models import Refund
from tests.conftest import STAFF_PASSWORD, _staff
from tests.orders.factories import order_checked_out, sku_for_sale
from tests.orders.test_support_services import pay
from tests.support.browser import admin_log_in

pytestmark = pytest.mark.browser


def test_finance_makes_a_partial_refund_and_an_over_refund_is_refused(
    page: Page, live_server: LiveServer, buyer: User
) -> None:
    finance = _staff("finance@example.com", FINANCE)
    order = pay(order_checked_out(buyer, sku_for_sale(price=1000)))

    admin_log_in(page, email=finance.email, password=STAFF_PASSWORD)
    page.click('#content-main th a[href="/admin/orders/order/"]')
    page.fill("#searchbar", str(order.pk))
    page.press("#searchbar", "Enter")
    rows = page.locator("#result_list tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("10.00 USD")
    rows.first.locator("th a").click()
    expect(page).to_have_url(re.compile(rf"/admin/orders/order/{order.pk}/change/"))
    expect(page.locator("#order-timeline")).to_contain_text("order.paid")

    page.click("#order-refund")
    page.check("input[name=scope][value=partial]")
    page.fill("#id_amount", "300")
    page.fill("#id_reason", "Late delivery")
    page.click("#order-action-confirm")

    expect(page).to_have_url(re.compile(rf"/admin/orders/order/{order.pk}/change/"))
    expect(page.locator(".messagelist .success")).to_contain_text("Refund of 3.00 USD requested")
    expect(page.locator("#order-refunds")).to_contain_text("Late delivery")
    expect(page.locator("#order-refunds h2")).to_contain_text("7.00 USD can still be refunded")

    page.click("#order-refund")
    page.check("input[name=scope][value=partial]")
    page.fill("#id_amount", "701")
    page.fill("#id_reason", "Too much")
    page.click("#order-action-confirm")

    expect(page.locator("#error-amount")).to_have_text(
        "At most 700 (7.00 USD) can still be refunded."
    )
    assert list(Refund.objects.filter(order=order).values_list("amount", flat=True)) == [300]
