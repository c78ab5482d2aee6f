"""Orders by status reach /metrics through the beat task that counts them."""

import re

import pytest

from orders.tasks import orders_metrics_refresh
from tests.orders.factories import order_checked_out, sku_for_sale

pytestmark = pytest.mark.django_db


def sample(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name}{labels} not in /metrics"
    return float(match.group(1))


def test_orders_by_status_and_pending_postings_are_exported(api_client, buyer):
    sku = sku_for_sale()
    order_checked_out(buyer, sku, key="one")
    order_checked_out(buyer, sku, key="two")

    counts = orders_metrics_refresh()
    text = api_client.get("/metrics").content.decode()

    assert counts["pending"] == 2
    assert counts["paid"] == 0
    assert sample(text, "marketplace_orders", '{status="pending"}') == 2
    assert sample(text, "marketplace_orders", '{status="refunded"}') == 0
    assert sample(text, "marketplace_finance_postings_pending") == 0
