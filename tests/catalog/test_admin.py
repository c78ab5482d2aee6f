import hashlib
import json

import pytest
from django.contrib.messages import get_messages
from django.core.files.uploadedfile import SimpleUploadedFile

from catalog.models import Artifact, Category, PartnerKey, RoyaltySplit, Sku, SkuStatus
from marketplace.models import User
from tests.catalog.factories import CategoryFactory, SkuFactory, publish_sku
from tests.conftest import STAFF_PASSWORD
from tests.support.keys import new_signing_key, public_key_b64, sign_manifest

pytestmark = pytest.mark.django_db

ADD_URL = "/admin/catalog/sku/add/"
CHANGELIST = "/admin/catalog/sku/"


@pytest.fixture
def ops_client(client, content_ops):
    client.force_login(content_ops)
    return client


def messages_of(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def sku_form(publisher, category, *, content: bytes, splits: list[tuple[int, int]], **fields):
    sha256 = hashlib.sha256(content).hexdigest()
    manifest = {
        "schema": "marketplace.manifest/v1",
        "publisher": publisher.partner.slug,
        "sku": fields.get("slug", "new-tool"),
        "version": "1.0.0",
        "artifact": {"filename": "tool.zip", "size": len(content), "sha256": sha256},
    }
    data = {
        "title": "New Tool",
        "slug": "new-tool",
        "partner": publisher.partner.pk,
        "category": category.pk,
        "version": "1.0.0",
        "summary": "",
        "description": "",
        "price_amount": "1999",
        "currency": "usd",
        "manifest_text": json.dumps(manifest),
        "manifest_signature": sign_manifest(publisher.key, manifest),
        "license_seats": "1",
        "license_entitlements": "[]",
        "preview_ttl_seconds": "900",
        "artifact_file": SimpleUploadedFile("tool.zip", content, "application/zip"),
        "splits-TOTAL_FORMS": str(len(splits)),
        "splits-INITIAL_FORMS": "0",
        "splits-MIN_NUM_FORMS": "0",
        "splits-MAX_NUM_FORMS": "1000",
    }
    for index, (partner_pk, basis_points) in enumerate(splits):
        data[f"splits-{index}-partner"] = partner_pk
        data[f"splits-{index}-basis_points"] = str(basis_points)
    return data | fields


def test_content_ops_create_a_sku_with_artifact_manifest_and_splits(ops_client, publisher):
    category = CategoryFactory()
    content = b"a real package" * 1000

    data = sku_form(publisher, category, content=content, splits=[(publisher.partner.pk, 10_000)])

    response = ops_client.post(ADD_URL, data)

    assert response.status_code == 302, response.context and response.context["errors"]
    sku = Sku.objects.get(slug="new-tool")
    assert sku.status == SkuStatus.DRAFT
    assert sku.currency == "USD"
    assert sku.artifact.sha256 == hashlib.sha256(content).hexdigest()
    assert sku.artifact.uploaded_by.email == "content.ops@example.com"
    assert sku.manifest_status == "pending"
    assert list(sku.splits.values_list("partner__slug", "basis_points")) == [("acme", 10_000)]

    page = ops_client.get(f"/admin/catalog/sku/{sku.pk}/change/")
    assert sku.artifact.sha256 in page.content.decode()
    assert "the manifest has not been verified yet" in page.content.decode()


def test_splits_not_summing_to_10000_are_refused_and_no_sku_is_created(ops_client, publisher):
    category = CategoryFactory()
    response = ops_client.post(
        ADD_URL,
        sku_form(publisher, category, content=b"x" * 100, splits=[(publisher.partner.pk, 9_000)]),
    )

    assert response.status_code == 200
    assert "The shares sum to 9,000 basis points" in response.content.decode()
    assert not Sku.objects.exists()
    assert not Artifact.objects.exists()


def test_a_manifest_that_is_not_json_is_refused_and_the_upload_is_kept(ops_client, publisher):
    category = CategoryFactory()
    data = sku_form(
        publisher, category, content=b"x" * 100, splits=[(publisher.partner.pk, 10_000)]
    )
    data["manifest_text"] = "{broken"

    response = ops_client.post(ADD_URL, data)

    assert response.status_code == 200
    form = response.context["adminform"].form
    assert form.errors["manifest_text"][0].startswith("The manifest is not valid JSON")
    assert not Sku.objects.exists()
    assert not Artifact.objects.exists()
    # Stored once, attached to nothing until the form comes back corrected.
    kept = form.stored_artifact
    assert kept.sha256 == hashlib.sha256(b"x" * 100).hexdigest()
    assert f'name="artifact_kept" value="{form.data["artifact_kept"]}"' in (
        response.content.decode()
    )


def test_activate_action_reports_per_sku_why_it_was_refused(ops_client, publisher):
    ready = publish_sku(publisher, slug="ready", activate=False)
    empty = SkuFactory(slug="empty", partner=publisher.partner)

    response = ops_client.post(
        CHANGELIST,
        {"action": "activate", "_selected_action": [ready.pk, empty.pk]},
        follow=True,
    )

    assert messages_of(response) == [
        "Not activated: empty: no artifact has been uploaded; no manifest is attached; "
        "no royalty splits are set.",
        "1 SKU(s) activated.",
    ]
    assert Sku.objects.get(pk=ready.pk).status == SkuStatus.ACTIVE
    assert Sku.objects.get(pk=empty.pk).status == SkuStatus.DRAFT


def test_suspend_asks_for_a_reason_then_applies_it(ops_client, publisher):
    sku = publish_sku(publisher)

    confirm = ops_client.post(CHANGELIST, {"action": "suspend", "_selected_action": [sku.pk]})
    assert confirm.status_code == 200
    assert "Reason (kept with the change)" in confirm.content.decode()
    assert Sku.objects.get(pk=sku.pk).status == SkuStatus.ACTIVE

    done = ops_client.post(
        CHANGELIST,
        {"action": "suspend", "_selected_action": [sku.pk], "reason": "DMCA notice", "apply": "1"},
        follow=True,
    )
    assert messages_of(done) == ["1 SKU(s) suspended."]
    sku.refresh_from_db()
    assert (sku.status, sku.status_reason) == (SkuStatus.SUSPENDED, "DMCA notice")


def test_retire_without_a_reason_changes_nothing(ops_client, publisher):
    sku = publish_sku(publisher)
    response = ops_client.post(
        CHANGELIST, {"action": "retire", "_selected_action": [sku.pk], "apply": "1"}
    )
    assert "A reason is required." in response.content.decode()
    assert Sku.objects.get(pk=sku.pk).status == SkuStatus.ACTIVE


def test_support_staff_cannot_publish(client, publisher):
    from tests.conftest import _staff

    support = _staff("support@example.com", "Support")
    client.force_login(support)
    sku = publish_sku(publisher, activate=False)

    changelist = client.get(CHANGELIST)
    assert changelist.status_code == 200
    assert 'value="activate"' not in changelist.content.decode()
    client.post(CHANGELIST, {"action": "activate", "_selected_action": [sku.pk]})
    assert Sku.objects.get(pk=sku.pk).status == SkuStatus.DRAFT
    assert client.get(ADD_URL).status_code == 403


def test_an_active_skus_identity_and_files_are_read_only(ops_client, publisher):
    sku = publish_sku(publisher)
    page = ops_client.get(f"/admin/catalog/sku/{sku.pk}/change/").content.decode()

    assert 'name="artifact_file"' not in page
    assert 'name="manifest_text"' not in page
    assert 'name="version"' not in page
    assert 'name="slug"' not in page
    assert 'name="price_amount"' in page
    assert "On sale." in page


def test_changelist_filters_and_search(ops_client, publisher):
    publish_sku(publisher, slug="findme", title="Findable Thing")
    publish_sku(publisher, slug="other", currency="EUR", activate=False)

    for query, expected in [
        ("status__exact=active", "findme"),
        ("currency=EUR", "other"),
        ("q=Findable", "findme"),
        (f"partner__id__exact={publisher.partner.pk}&status__exact=draft", "other"),
    ]:
        page = ops_client.get(f"{CHANGELIST}?{query}")
        assert page.status_code == 200
        result = page.context["cl"].result_list
        assert [sku.slug for sku in result] == [expected], query


def test_partner_keys_are_registered_on_the_partner_page(ops_client, publisher):
    url = f"/admin/catalog/partner/{publisher.partner.pk}/change/"
    base = {
        "name": publisher.partner.name,
        "slug": publisher.partner.slug,
        "kind": "publisher",
        "is_active": "on",
        "keys-TOTAL_FORMS": "2",
        "keys-INITIAL_FORMS": "1",
        "keys-MIN_NUM_FORMS": "0",
        "keys-MAX_NUM_FORMS": "1000",
        "keys-0-id": publisher.partner.keys.get().pk,
        "keys-0-partner": publisher.partner.pk,
        "keys-1-partner": publisher.partner.pk,
        "keys-1-key_id": "k2",
    }

    refused = ops_client.post(url, base | {"keys-1-public_key": "bm9wZQ=="})
    assert "An Ed25519 public key is 32 bytes" in refused.content.decode()
    assert PartnerKey.objects.count() == 1

    taken = ops_client.post(url, base | {"keys-1-public_key": public_key_b64(publisher.key)})
    assert "This key is already registered as acme/k1." in taken.content.decode()
    assert PartnerKey.objects.count() == 1

    accepted = ops_client.post(url, base | {"keys-1-public_key": public_key_b64(new_signing_key())})
    assert accepted.status_code == 302
    assert sorted(PartnerKey.objects.values_list("key_id", flat=True)) == ["k1", "k2"]


def test_revoking_a_key_from_the_admin(ops_client, publisher, django_user_model):
    security = User.objects.create_user("sec@example.com", password=STAFF_PASSWORD, is_staff=True)
    security.is_superuser = True
    security.save()
    ops_client.force_login(security)
    sku = publish_sku(publisher)
    key = publisher.partner.keys.get()

    ops_client.post(
        "/admin/catalog/partnerkey/",
        {"action": "revoke", "_selected_action": [key.pk], "reason": "leaked", "apply": "1"},
    )

    key.refresh_from_db()
    assert (key.status, key.revoked_reason) == ("revoked", "leaked")
    assert Sku.objects.get(pk=sku.pk).status == SkuStatus.SUSPENDED


def test_a_category_cannot_be_moved_under_its_own_child(ops_client):
    root = CategoryFactory(slug="root", name="Root")
    child = CategoryFactory(slug="child", parent=root)

    response = ops_client.post(
        f"/admin/catalog/category/{root.pk}/change/",
        {"name": "Root", "slug": "root", "parent": child.pk, "description": ""},
    )

    assert response.status_code == 200
    assert "cannot be placed under itself" in response.content.decode()
    assert Category.objects.get(pk=root.pk).parent is None


def test_editing_splits_of_an_active_sku_keeps_them_complete(ops_client, publisher):
    sku = publish_sku(publisher)
    split = sku.splits.get()
    page = ops_client.get(f"/admin/catalog/sku/{sku.pk}/change/")
    data = {
        key: value
        for key, value in page.context["adminform"].form.initial.items()
        if value is not None and key not in ("manifest_signature",)
    }
    data |= {
        "category": sku.category_id,
        "license_entitlements": "[]",
        "splits-TOTAL_FORMS": "1",
        "splits-INITIAL_FORMS": "1",
        "splits-MIN_NUM_FORMS": "0",
        "splits-MAX_NUM_FORMS": "1000",
        "splits-0-id": split.pk,
        "splits-0-sku": sku.pk,
        "splits-0-partner": publisher.partner.pk,
        "splits-0-basis_points": "5000",
    }

    response = ops_client.post(f"/admin/catalog/sku/{sku.pk}/change/", data)

    assert "The shares sum to 5,000 basis points" in response.content.decode()
    assert list(RoyaltySplit.objects.values_list("basis_points", flat=True)) == [10_000]
