"""A SKU form sent back with errors keeps the artifact that was uploaded with it: the corrected
submit uses it without the file being chosen again, only its uploader can use it, and the
orphan sweep deletes one that is never used."""

import hashlib
import os
import time
from pathlib import Path

import pytest
from django.core import signing
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db.models.signals import post_save

from audit.models import AuditEvent
from catalog import services
from catalog.models import Artifact, Sku, SkuStatus
from catalog.services.artifacts import _KEPT_UPLOAD_SALT
from catalog.tasks import ORPHAN_GRACE, artifact_orphans_delete
from tests.catalog.factories import TEST_ACTOR, CategoryFactory, publish_sku
from tests.catalog.test_admin import ADD_URL, sku_form
from tests.catalog.test_admin_constraints import change_data
from tests.conftest import _staff

pytestmark = pytest.mark.django_db

CONTENT = b"the partner's package " * 5000
SHA256 = hashlib.sha256(CONTENT).hexdigest()


@pytest.fixture
def ops_client(client, content_ops):
    client.force_login(content_ops)
    return client


@pytest.fixture
def category():
    return CategoryFactory()


def stored_files() -> list[str]:
    root = Path(default_storage.location)
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())


def first_submit(client, publisher, category, **fields):
    """The add form with the artifact and an error: the form comes back with the upload kept."""
    data = sku_form(
        publisher,
        category,
        content=CONTENT,
        splits=[(publisher.partner.pk, 10_000)],
        price_amount="0",
        **fields,
    )
    response = client.post(ADD_URL, data)
    assert response.status_code == 200
    form = response.context["adminform"].form
    assert "price_amount" in form.errors
    return data, form.data["artifact_kept"], response.content.decode()


def corrected(data: dict, token: str, **fields) -> dict:
    """The same form sent again with the price fixed and no file chosen, as a browser sends it
    after the page came back: the hidden field carries the kept upload."""
    data = {name: value for name, value in data.items() if name != "artifact_file"}
    return data | {"price_amount": "1999", "artifact_kept": token} | fields


def test_the_corrected_form_uses_the_upload_kept_from_the_one_sent_back(
    ops_client, publisher, category, content_ops
):
    data, token, page = first_submit(ops_client, publisher, category)

    assert "<strong>tool.zip</strong> (107.4\xa0KB, sha256" in page
    assert f'<code title="{SHA256}">{SHA256[:12]}…</code>) is kept' in page
    assert "is kept — upload another to replace it." in page
    assert f'name="artifact_kept" value="{token}"' in page
    assert not Sku.objects.exists()
    assert not Artifact.objects.exists()
    [kept_file] = stored_files()

    response = ops_client.post(ADD_URL, corrected(data, token))

    assert response.status_code == 302
    sku = Sku.objects.select_related("artifact").get(slug="new-tool")
    assert sku.price_amount == 1999
    assert sku.artifact.sha256 == SHA256
    assert sku.artifact.size == len(CONTENT)
    assert sku.artifact.filename == "tool.zip"
    assert sku.artifact.content_type == "application/zip"
    assert sku.artifact.uploaded_by == content_ops
    # The file was stored once: the artifact is the kept file.
    assert stored_files() == [kept_file] == [sku.artifact.storage_key]
    uploaded = AuditEvent.objects.get(action="sku.artifact_uploaded")
    assert uploaded.data["sha256"] == SHA256


def test_an_upload_is_kept_when_only_the_splits_are_wrong(ops_client, publisher, category):
    data = sku_form(publisher, category, content=CONTENT, splits=[(publisher.partner.pk, 9_000)])
    response = ops_client.post(ADD_URL, data)
    assert "The shares sum to 9,000 basis points" in response.content.decode()
    token = response.context["adminform"].form.data["artifact_kept"]

    again = corrected(data, token, **{"splits-0-basis_points": "10000"})
    assert ops_client.post(ADD_URL, again).status_code == 302

    assert Sku.objects.get(slug="new-tool").artifact.sha256 == SHA256


def test_a_new_file_replaces_the_kept_one(ops_client, publisher, category):
    data, token, _ = first_submit(ops_client, publisher, category)
    other = b"a newer build"

    again = corrected(data, token) | {
        "artifact_file": SimpleUploadedFile("newer.zip", other, "application/zip")
    }
    assert ops_client.post(ADD_URL, again).status_code == 302

    artifact = Sku.objects.get(slug="new-tool").artifact
    assert (artifact.filename, artifact.sha256) == ("newer.zip", hashlib.sha256(other).hexdigest())


def refused(client, data: dict, token: str) -> list[str]:
    events = AuditEvent.objects.count()
    response = client.post(ADD_URL, corrected(data, token))
    assert response.status_code == 200
    form = response.context["adminform"].form
    assert form.data["artifact_kept"] == ""  # not offered again
    assert not Sku.objects.exists()
    assert not Artifact.objects.exists()
    assert AuditEvent.objects.count() == events
    return form.errors["artifact_file"]


def test_a_tampered_token_is_refused_at_the_file(ops_client, publisher, category):
    data, token, _ = first_submit(ops_client, publisher, category)
    payload, rest = token.split(":", 1)
    forged = signing.dumps(
        signing.loads(token, salt=_KEPT_UPLOAD_SALT) | {"sha256": "0" * 64},
        salt="chosen-by-the-forger",
    )

    for bad in (f"{payload}x:{rest}", forged.split(":", 1)[0] + ":" + rest, forged, "junk"):
        assert refused(ops_client, data, bad) == [
            "The kept upload cannot be used; choose the file again."
        ]


def test_another_users_kept_upload_is_refused(client, publisher, category, content_ops):
    client.force_login(content_ops)
    data, token, _ = first_submit(client, publisher, category)

    client.force_login(_staff("other.ops@example.com", "Content ops"))

    assert refused(client, data, token) == [
        "The kept upload was made by another user; choose the file again."
    ]


def test_an_expired_kept_upload_is_refused(ops_client, publisher, category):
    data, token, _ = first_submit(ops_client, publisher, category)

    class SixHoursAgo(signing.TimestampSigner):
        def timestamp(self) -> str:
            age = services.KEPT_UPLOAD_MAX_AGE.total_seconds() + 1
            return signing.b62_encode(int(time.time() - age))

    old = SixHoursAgo(salt=_KEPT_UPLOAD_SALT).sign_object(
        signing.loads(token, salt=_KEPT_UPLOAD_SALT)
    )

    assert refused(ops_client, data, old) == ["The kept upload has expired; choose the file again."]


def test_a_kept_upload_is_attached_once(ops_client, publisher, category):
    data, token, _ = first_submit(ops_client, publisher, category)
    assert ops_client.post(ADD_URL, corrected(data, token)).status_code == 302

    again = corrected(data, token, slug="new-tool-2", title="New Tool 2")
    response = ops_client.post(ADD_URL, again)

    assert response.context["adminform"].form.errors["artifact_file"] == [
        "tool.zip is already attached to a SKU; choose the file again."
    ]
    assert Sku.objects.count() == 1


def test_the_orphan_sweep_deletes_an_abandoned_kept_upload(ops_client, publisher, category):
    data, token, _ = first_submit(ops_client, publisher, category)
    [kept_file] = stored_files()
    assert artifact_orphans_delete() == 0  # a kept upload still in use is spared

    # The form was never sent again; a day later the file is an orphan.
    a_day_ago = time.time() - ORPHAN_GRACE.total_seconds() - 60
    os.utime(Path(default_storage.location) / kept_file, (a_day_ago, a_day_ago))

    assert artifact_orphans_delete() == 1
    assert stored_files() == []
    orphans = AuditEvent.objects.get(action="artifact.orphans_deleted")
    assert orphans.data == {"count": 1, "keys": [kept_file]}
    assert refused(ops_client, data, token) == [
        "tool.zip is no longer in storage; choose the file again."
    ]


def test_a_kept_upload_expires_well_before_the_sweep_deletes_it():
    assert services.KEPT_UPLOAD_MAX_AGE * 2 <= ORPHAN_GRACE


def test_a_save_refused_by_a_change_that_came_first_keeps_the_form_and_the_upload(
    ops_client, publisher, content_ops
):
    sku = publish_sku(publisher, activate=False)
    services.sku_manifest_verify(sku_id=sku.pk, actor=TEST_ACTOR)
    events = AuditEvent.objects.count()

    def activated_meanwhile(sender, instance, **kwargs):
        # Another user activates the SKU while this form is being saved.
        Sku.objects.filter(pk=instance.pk).update(status=SkuStatus.ACTIVE)

    url = f"/admin/catalog/sku/{sku.pk}/change/"
    data = change_data(ops_client, sku, title="Renamed") | {
        "artifact_file": SimpleUploadedFile("tool.zip", CONTENT, "application/zip")
    }
    post_save.connect(activated_meanwhile, sender=Sku)
    try:
        response = ops_client.post(url, data)
    finally:
        post_save.disconnect(activated_meanwhile, sender=Sku)

    assert response.status_code == 200
    form = response.context["adminform"].form
    assert form.non_field_errors() == [
        f"{sku.slug} is active: its artifact can only change while it is a draft or suspended."
    ]
    assert "is kept — upload another to replace it." in response.content.decode()
    assert len(stored_files()) == 2  # the SKU's artifact, and this upload stored once
    # The whole save was rolled back: the title, the artifact, the audit events.
    assert Sku.objects.get(pk=sku.pk).title == sku.title
    assert Sku.objects.get(pk=sku.pk).artifact_id == sku.artifact_id
    assert AuditEvent.objects.count() == events

    again = corrected(data, form.data["artifact_kept"], price_amount=str(sku.price_amount))
    assert ops_client.post(url, again).status_code == 302
    saved = Sku.objects.select_related("artifact").get(pk=sku.pk)
    assert (saved.title, saved.artifact.sha256) == ("Renamed", SHA256)
