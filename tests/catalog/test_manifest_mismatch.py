"""A manifest whose signature verifies but that names another artifact's SHA-256 is a mismatch,
not verified: in the status, in the audit log, in the admin, and it cannot go on sale."""

import hashlib
import io

import pytest
from django.db import IntegrityError, transaction

from audit.models import AuditEvent
from catalog import services
from catalog.exceptions import TransitionRefused
from catalog.manifests import manifest_for
from catalog.models import ManifestStatus, Sku, SkuStatus
from tests.catalog.factories import TEST_ACTOR, SkuFactory, publish_sku
from tests.support.keys import sign_manifest

pytestmark = pytest.mark.django_db

EARLIER = b"an earlier build"
EARLIER_SHA256 = hashlib.sha256(EARLIER).hexdigest()


def upload(sku: Sku, content: bytes) -> Sku:
    services.sku_artifact_upload(
        sku=sku, content=io.BytesIO(content), filename="pkg.zip", actor=TEST_ACTOR
    )
    return Sku.objects.select_related("artifact").get(pk=sku.pk)


def mismatched(publisher, **sku_fields) -> Sku:
    """A draft whose partner signed a manifest of an earlier build than the one uploaded."""
    sku = upload(SkuFactory(partner=publisher.partner, **sku_fields), b"the real build")
    manifest = manifest_for(sku, sku.artifact)
    manifest["artifact"] = {"sha256": EARLIER_SHA256}
    services.sku_manifest_attach(
        sku_id=sku.pk,
        manifest=manifest,
        signature=sign_manifest(publisher.key, manifest),
        actor=TEST_ACTOR,
    )
    services.sku_splits_set(sku_id=sku.pk, splits=[(publisher.partner, 10_000)], actor=TEST_ACTOR)
    return sku


def events(sku: Sku) -> list[tuple[str, dict]]:
    return list(
        AuditEvent.objects.filter(subject_type="sku", subject_id=str(sku.pk))
        .order_by("id")
        .values_list("action", "data")
    )


def test_a_good_signature_over_another_artifacts_manifest_is_a_mismatch(publisher):
    sku = mismatched(publisher)
    real = sku.artifact.sha256

    check = services.sku_manifest_verify(sku_id=sku.pk, actor=TEST_ACTOR)

    assert check.status == ManifestStatus.MISMATCH
    sku.refresh_from_db()
    assert sku.manifest_status == ManifestStatus.MISMATCH
    assert sku.get_manifest_status_display() == "Signature valid, names another artifact"
    assert sku.manifest_key_id == "k1"
    assert sku.manifest_detail == (
        f"signed by acme's key 'k1'; but the manifest names artifact SHA-256 {EARLIER_SHA256}, "
        f"not the uploaded artifact's {real}"
    )
    assert events(sku)[-1] == (
        "sku.manifest_mismatch",
        {"key_id": "k1", "manifest_artifact_sha256": EARLIER_SHA256, "artifact_sha256": real},
    )
    assert not AuditEvent.objects.filter(action="sku.manifest_verified").exists()


def test_activation_of_a_mismatch_is_refused_with_the_disagreement(publisher):
    sku = mismatched(publisher)

    with pytest.raises(TransitionRefused) as caught:
        services.sku_activate(sku_id=sku.pk, actor=TEST_ACTOR)

    assert caught.value.reasons == [
        f"the manifest names artifact SHA-256 {EARLIER_SHA256}, "
        f"but the uploaded artifact's is {sku.artifact.sha256}"
    ]
    sku.refresh_from_db()
    assert (sku.status, sku.manifest_status) == (SkuStatus.DRAFT, ManifestStatus.MISMATCH)
    # The database agrees: a mismatch is never on sale.
    with pytest.raises(IntegrityError), transaction.atomic():
        Sku.objects.filter(pk=sku.pk).update(status=SkuStatus.ACTIVE)


def test_uploading_the_named_artifact_makes_it_verified_and_another_a_mismatch_again(publisher):
    sku = mismatched(publisher)
    services.sku_manifest_verify(sku_id=sku.pk, actor=TEST_ACTOR)
    before = len(events(sku))

    sku = upload(sku, EARLIER)

    assert sku.manifest_status == ManifestStatus.VERIFIED
    assert sku.manifest_detail == "signed with the partner's key 'k1'"
    assert [action for action, _ in events(sku)[before:]] == [
        "sku.artifact_uploaded",
        "sku.manifest_verified",
    ]
    services.sku_activate(sku_id=sku.pk, actor=TEST_ACTOR)
    services.sku_suspend(sku_id=sku.pk, reason="new build", actor=TEST_ACTOR)
    before = len(events(sku))

    sku = upload(sku, b"a later build")

    assert sku.manifest_status == ManifestStatus.MISMATCH
    assert events(sku)[before:] == [
        ("sku.artifact_uploaded", events(sku)[before][1]),
        (
            "sku.manifest_mismatch",
            {
                "key_id": "k1",
                "manifest_artifact_sha256": EARLIER_SHA256,
                "artifact_sha256": hashlib.sha256(b"a later build").hexdigest(),
            },
        ),
    ]
    # Another upload that is not the named one changes nothing more.
    before = len(events(sku))
    upload(sku, b"yet another build")
    assert [action for action, _ in events(sku)[before:]] == ["sku.artifact_uploaded"]


def test_a_mismatch_found_on_re_verification_takes_the_sku_off_sale(publisher):
    sku = publish_sku(publisher)
    # A manifest the partner signed for other bytes, left from before the check existed.
    manifest = manifest_for(sku, sku.artifact) | {"artifact": {"sha256": EARLIER_SHA256}}
    Sku.objects.filter(pk=sku.pk).update(
        manifest=manifest, manifest_signature=sign_manifest(publisher.key, manifest)
    )

    check = services.sku_manifest_verify(sku_id=sku.pk, actor=TEST_ACTOR)

    assert check.status == ManifestStatus.MISMATCH
    sku.refresh_from_db()
    assert (sku.status, sku.manifest_status) == (SkuStatus.SUSPENDED, ManifestStatus.MISMATCH)
    assert sku.status_reason.startswith("manifest names another artifact on re-verification: ")
    assert [action for action, _ in events(sku)[-2:]] == [
        "sku.manifest_mismatch",
        "sku.suspended",
    ]


def test_revoking_the_key_rejects_a_mismatched_manifest_too(publisher):
    sku = mismatched(publisher)
    services.sku_manifest_verify(sku_id=sku.pk, actor=TEST_ACTOR)

    services.partner_key_revoke(
        key_pk=publisher.partner.keys.get().pk, reason="leaked", actor=TEST_ACTOR
    )

    sku.refresh_from_db()
    assert sku.manifest_status == ManifestStatus.REJECTED
    assert events(sku)[-1][0] == "sku.manifest_rejected"


def test_the_admin_shows_a_mismatch_not_verified(client, content_ops, publisher):
    client.force_login(content_ops)
    sku = mismatched(publisher, slug="mismatched")
    verified = publish_sku(publisher, slug="verified", activate=False)

    response = client.post(
        "/admin/catalog/sku/",
        {"action": "verify_manifest", "_selected_action": [sku.pk, verified.pk]},
        follow=True,
    )

    messages = [(m.level_tag, str(m)) for m in response.context["messages"]]
    assert messages[0][0] == "error"
    assert messages[0][1].startswith(
        "mismatched: Signature valid, names another artifact — signed by acme's key 'k1'; but "
    )
    assert messages[1] == ("success", "verified: Verified — signed by acme's key 'k1'")
    rows = {
        row.slug: row.get_manifest_status_display() for row in response.context["cl"].result_list
    }
    assert rows == {"mismatched": "Signature valid, names another artifact", "verified": "Verified"}
    page = client.get(f"/admin/catalog/sku/{sku.pk}/change/").content.decode()
    assert "Signature valid, names another artifact" in page
    assert f"the manifest names artifact SHA-256 {EARLIER_SHA256}" in page  # Ready to activate?
    assert "Verified" not in page
    filtered = client.get("/admin/catalog/sku/?manifest_status__exact=mismatch")
    assert [row.slug for row in filtered.context["cl"].result_list] == ["mismatched"]


def test_the_api_never_shows_a_mismatch(api_client, publisher):
    """Buyers see active SKUs only, and a mismatch cannot be active; nor does the API show a
    manifest status at all."""
    sku = mismatched(publisher, slug="mismatched")
    services.sku_manifest_verify(sku_id=sku.pk, actor=TEST_ACTOR)
    on_sale = publish_sku(publisher, slug="on-sale")

    assert api_client.get("/api/v1/skus/mismatched").status_code == 404
    listed = api_client.get("/api/v1/skus").json()["results"]
    assert [item["slug"] for item in listed] == ["on-sale"]
    detail = api_client.get(f"/api/v1/skus/{on_sale.slug}").json()
    assert not any("manifest" in field for field in detail)
