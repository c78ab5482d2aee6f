"""Orders hands released, refunded and disputed orders to licensing through orders.handover;
without a receiver the platform does not start, and nothing is handed over silently."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from licensing.handover import LicensingReceiver
from licensing.models import Proof
from licensing.services import LICENSING_WORKER, delivery_package, delivery_regenerate
from orders import handover
from tests.licensing.factories import order_delivered

BASE_DIR = Path(__file__).resolve().parent.parent.parent


def test_the_platform_registers_licensing_as_the_receiver():
    assert isinstance(handover.receiver_required(), LicensingReceiver)


def _run(code: str) -> subprocess.CompletedProcess[str]:
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")},
        "DJANGO_SETTINGS_MODULE": "tests.support.settings_without_platform",
    }
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=BASE_DIR,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_without_a_receiver_the_system_check_refuses_to_go_on():
    result = _run(
        "import django, sys; django.setup(); from django.core.management import call_command;"
        "call_command('check')"
    )

    assert result.returncode != 0
    assert "orders.E001" in result.stderr
    assert "no receiver for released, refunded and disputed orders" in result.stderr


def test_without_a_receiver_a_hand_over_fails_loudly():
    result = _run(
        "import django; django.setup(); from orders import handover;"
        "handover.order_revoked('00000000-0000-0000-0000-000000000001', 'refunded')"
    )

    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr


@pytest.mark.django_db
def test_the_order_json_and_the_delivery_endpoint_name_the_same_proof(buyer, buyer_client):
    # Licensing's own selector answers both: the proof recorded last for the order.
    delivered = order_delivered(buyer)
    first = Proof.objects.get(order=delivered.order)
    regenerated = delivery_regenerate(
        delivery_id=delivered.delivery.pk, reason="lost package", actor=LICENSING_WORKER
    )
    assert delivery_package(delivery_id=regenerated.pk, actor=LICENSING_WORKER) == "ready"
    latest = Proof.objects.get(delivery=regenerated)

    shown = buyer_client.get(f"/api/v1/orders/{delivered.order.pk}").json()["proof"]
    listed = buyer_client.get("/api/v1/orders").json()["results"][0]["proof"]
    delivery = buyer_client.get(f"/api/v1/orders/{delivered.order.pk}/delivery").json()["proof"]

    assert shown == listed == delivery == str(latest.pk) != str(first.pk)
    assert handover.latest_proofs([delivered.order.pk]) == {delivered.order.pk: latest.pk}


@pytest.mark.django_db
def test_a_page_of_orders_costs_the_same_queries_whatever_its_size(buyer, buyer_client):
    order_delivered(buyer)
    with CaptureQueriesContext(connection) as one:
        assert len(buyer_client.get("/api/v1/orders").json()["results"]) == 1
    order_delivered(buyer)
    order_delivered(buyer)
    with CaptureQueriesContext(connection) as three:
        assert len(buyer_client.get("/api/v1/orders").json()["results"]) == 3
    assert len(three) == len(one)
