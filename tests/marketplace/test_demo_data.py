import hashlib
import re
from io import StringIO

import pytest
from django.core.files.storage import default_storage
from django.core.management import call_command

from catalog.models import Category, ManifestStatus, Partner, Sku, SkuStatus
from catalog.selectors import sku_activation_blockers

pytestmark = pytest.mark.django_db


def load(*args: str) -> str:
    out = StringIO()
    call_command("load_demo_data", *args, stdout=out)
    return out.getvalue()


def test_demo_data_is_a_real_catalog_and_loads_once(client):
    output = load()

    assert Partner.objects.count() >= 3
    assert Category.objects.count() >= 5
    assert Category.objects.filter(parent__isnull=False).exists()
    assert Sku.objects.count() >= 40
    active = Sku.objects.active().select_related("artifact", "partner")
    assert active.count() > Sku.objects.count() / 2
    assert set(Sku.objects.values_list("status", flat=True)) == set(SkuStatus.values)
    for sku in active:
        with default_storage.open(sku.artifact.storage_key, "rb") as stored:
            assert hashlib.sha256(stored.read()).hexdigest() == sku.artifact.sha256
        assert sku.manifest_status == ManifestStatus.VERIFIED
        assert sum(sku.splits.values_list("basis_points", flat=True)) == 10_000
    assert Sku.objects.filter(splits__basis_points=3000).exists()  # co-created goods

    # One draft shows a refusal: its manifest names another build.
    refused = Sku.objects.get(slug="polygon-forge-harbour-boats")
    assert any("names artifact SHA-256" in reason for reason in sku_activation_blockers(refused))

    email, password = re.search(r"Staff account: (\S+) / (\S+)", output).groups()
    assert client.login(username=email, password=password)
    assert client.get("/admin/catalog/sku/").status_code == 200

    counts = (Partner.objects.count(), Category.objects.count(), Sku.objects.count())
    second = load("--staff-password", "chosen-password-123")
    assert (Partner.objects.count(), Category.objects.count(), Sku.objects.count()) == counts
    assert "0 SKUs created" in second
    assert "chosen-password-123" in second
