import hashlib
import re
from io import StringIO

import pytest
from django.core.files.storage import default_storage
from django.core.management import call_command
from django.db.models import Count

from audit.models import AuditEvent
from audit.sealer import seal_all
from catalog.models import Category, ManifestStatus, Partner, Sku, SkuStatus
from catalog.selectors import sku_activation_blockers
from marketplace.models import User

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

    # One draft shows a refusal: its manifest names another build. Its signature is good, but
    # it is not shown as verified.
    refused = Sku.objects.select_related("artifact").get(slug="polygon-forge-harbour-boats")
    assert any("names artifact SHA-256" in reason for reason in sku_activation_blockers(refused))
    assert refused.manifest_status == ManifestStatus.MISMATCH
    assert set(Sku.objects.values_list("manifest_status", flat=True)) == {
        ManifestStatus.VERIFIED,
        ManifestStatus.MISMATCH,
    }

    email, password = re.search(r"Staff account: (\S+) / (\S+)", output).groups()
    assert client.login(username=email, password=password)
    assert client.get("/admin/catalog/sku/").status_code == 200

    counts = (Partner.objects.count(), Category.objects.count(), Sku.objects.count())
    events = AuditEvent.objects.count()
    second = load()
    assert (Partner.objects.count(), Category.objects.count(), Sku.objects.count()) == counts
    assert AuditEvent.objects.count() == events  # nothing new was loaded, nothing recorded
    assert "0 SKUs created" in second
    # The second run keeps the staff password and prints it again.
    assert re.search(r"Staff account: (\S+) / (\S+)", second).groups() == (email, password)
    assert client.login(username=email, password=password)

    third = load("--staff-password", "chosen-password-123")
    assert "chosen-password-123" in third
    assert list(AuditEvent.objects.order_by("id").values_list("action", flat=True)[events:]) == [
        "account.password_set"
    ]
    assert client.login(username=email, password="chosen-password-123")


def test_a_staff_password_changed_since_the_demo_set_it_is_neither_replaced_nor_shown():
    first = load()
    email, password = re.search(r"Staff account: (\S+) / (\S+)", first).groups()
    staff = User.objects.get(email=email)
    staff.set_password("changed-by-its-owner-42")
    staff.save()

    again = load()

    assert password not in again
    assert f"Staff account: {email} (its password was changed" in again
    staff.refresh_from_db()
    assert staff.check_password("changed-by-its-owner-42")


def test_demo_data_leaves_an_audit_chain_that_verifies():
    load()
    seal_all()

    verified = StringIO()
    call_command("audit_verify", stdout=verified)
    assert "OK" in verified.getvalue()

    assert set(AuditEvent.objects.values_list("actor_type", "actor_id")) == {
        ("system", "load_demo_data")
    }
    per_action = dict(AuditEvent.objects.values_list("action").annotate(n=Count("id")).order_by())
    skus = Sku.objects.count()
    statuses = dict(Sku.objects.values_list("status").annotate(n=Count("pk")).order_by())
    assert per_action == {
        "account.created": 1,
        "partner.created": Partner.objects.count(),
        "partner.key_registered": Partner.objects.count(),
        "category.created": Category.objects.count(),
        "sku.created": skus,
        "sku.artifact_uploaded": skus,
        "sku.manifest_attached": skus,
        "sku.splits_changed": skus,
        # Drafts are checked when loaded, the others on activation. The draft whose manifest
        # names another build has a good signature over other bytes: a mismatch, not verified.
        "sku.manifest_verified": skus - 1,
        "sku.manifest_mismatch": 1,
        "sku.activated": skus - statuses[SkuStatus.DRAFT],
        # Activation has moderation judge each SKU's listing, artifact and manifest.
        "sku.moderation_reviewed": 3 * (skus - statuses[SkuStatus.DRAFT]),
        "sku.suspended": statuses[SkuStatus.SUSPENDED],
        "sku.retired": statuses[SkuStatus.RETIRED],
        # A sandbox and four samples (previews.demo), each switched on.
        "preview.material_added": 5,
        "sku.preview_enabled": 5,
    }
    activated = AuditEvent.objects.filter(action="sku.activated").first()
    sku = Sku.objects.get(pk=activated.subject_id)
    assert activated.data == {
        "from": "draft",
        "artifact_sha256": sku.artifact.sha256,
        "manifest_key_id": "demo-2026",
    }


def test_each_staff_account_keeps_its_own_password():
    first = load()
    email, password = re.search(r"Staff account: (\S+) / (\S+)", first).groups()

    load("--staff-email", "ops2@marketplace.test", "--staff-password", "another-password-9")
    again = load()

    assert re.search(r"Staff account: (\S+) / (\S+)", again).groups() == (email, password)
