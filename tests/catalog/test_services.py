import base64
import io

import pytest

from catalog import services
from catalog.exceptions import (
    InvalidCategory,
    InvalidManifest,
    InvalidPartnerKey,
    InvalidSplits,
    SkuLocked,
    TransitionRefused,
)
from catalog.manifests import manifest_for
from catalog.models import KeyStatus, ManifestStatus, Partner, RoyaltySplit, Sku, SkuStatus
from tests.catalog.factories import (
    TEST_ACTOR,
    CategoryFactory,
    PartnerFactory,
    SkuFactory,
    publish_sku,
)
from tests.support.keys import new_signing_key, public_key_b64, public_key_pem, sign_manifest

pytestmark = pytest.mark.django_db


def upload(sku: Sku, content: bytes = b"package bytes") -> Sku:
    services.sku_artifact_upload(
        sku=sku, content=io.BytesIO(content), filename="pkg.zip", actor=TEST_ACTOR
    )
    sku.refresh_from_db()
    return sku


def attach_signed(sku: Sku, key, **overrides) -> Sku:
    manifest = manifest_for(sku, sku.artifact) | overrides
    services.sku_manifest_attach(
        sku_id=sku.pk, manifest=manifest, signature=sign_manifest(key, manifest), actor=TEST_ACTOR
    )
    sku.refresh_from_db()
    return sku


def refusal(sku: Sku) -> list[str]:
    with pytest.raises(TransitionRefused) as caught:
        services.sku_activate(sku_id=sku.pk, actor=TEST_ACTOR)
    sku.refresh_from_db()
    assert sku.status == SkuStatus.DRAFT
    return caught.value.reasons


# --- Activation --------------------------------------------------------------------------------


def test_a_complete_sku_activates(publisher):
    sku = publish_sku(publisher, activate=False)

    services.sku_activate(sku_id=sku.pk, actor=TEST_ACTOR)

    sku.refresh_from_db()
    assert sku.status == SkuStatus.ACTIVE
    assert sku.manifest_status == ManifestStatus.VERIFIED
    assert sku.manifest_key_id == "k1"
    assert sku.activated_at is not None


def test_activation_of_an_empty_draft_lists_every_reason(publisher):
    sku = SkuFactory(partner=publisher.partner)

    assert refusal(sku) == [
        "no artifact has been uploaded",
        "no manifest is attached",
        "no royalty splits are set",
    ]


def test_activation_refused_when_the_manifest_names_another_artifact(publisher):
    sku = upload(SkuFactory(partner=publisher.partner), b"the real build")
    other = "0" * 64
    attach_signed(sku, publisher.key, artifact={"sha256": other, "size": sku.artifact.size})
    services.sku_splits_set(sku_id=sku.pk, splits=[(publisher.partner, 10_000)], actor=TEST_ACTOR)

    assert refusal(sku) == [
        f"the manifest names artifact SHA-256 {other}, "
        f"but the uploaded artifact's is {sku.artifact.sha256}"
    ]


def test_activation_refused_when_signed_by_an_unregistered_key(publisher):
    sku = upload(SkuFactory(partner=publisher.partner))
    attach_signed(sku, new_signing_key())
    services.sku_splits_set(sku_id=sku.pk, splits=[(publisher.partner, 10_000)], actor=TEST_ACTOR)

    reasons = refusal(sku)

    assert len(reasons) == 1
    assert reasons[0].startswith("the manifest signature was rejected: the signature matches none")
    assert "'acme'" in reasons[0]
    assert sku.manifest_status == ManifestStatus.REJECTED


def test_activation_refused_when_the_manifest_was_changed_after_signing(publisher):
    sku = upload(SkuFactory(partner=publisher.partner))
    manifest = manifest_for(sku, sku.artifact)
    signature = sign_manifest(publisher.key, manifest)
    services.sku_manifest_attach(
        sku_id=sku.pk,
        manifest={**manifest, "version": "9.9.9"},
        signature=signature,
        actor=TEST_ACTOR,
    )
    services.sku_splits_set(sku_id=sku.pk, splits=[(publisher.partner, 10_000)], actor=TEST_ACTOR)

    reasons = refusal(sku)

    assert reasons[0].startswith("the manifest signature was rejected")
    assert reasons[1] == "the manifest's version is '9.9.9', not '1.0.0'"


def test_activation_refused_for_incomplete_splits(publisher):
    sku = upload(SkuFactory(partner=publisher.partner))
    attach_signed(sku, publisher.key)
    services.sku_splits_set(
        sku_id=sku.pk,
        splits=[(publisher.partner, 6000), (PartnerFactory(), 4000)],
        actor=TEST_ACTOR,
    )
    RoyaltySplit.objects.filter(sku=sku, basis_points=4000).delete()  # as a failed edit might

    assert refusal(sku) == ["the royalty splits sum to 6,000 basis points, not 10,000"]


def test_activation_refused_for_a_deactivated_partner(publisher):
    sku = publish_sku(publisher, activate=False)
    publisher.partner.is_active = False
    services.partner_save(partner=publisher.partner, actor=TEST_ACTOR)

    assert refusal(sku) == [
        "partner acme is deactivated",
        "1 partner(s) in the royalty splits are deactivated",
    ]


def test_a_retired_sku_cannot_be_activated(publisher):
    sku = publish_sku(publisher)
    services.sku_retire(sku_id=sku.pk, reason="gone", actor=TEST_ACTOR)

    with pytest.raises(TransitionRefused) as caught:
        services.sku_activate(sku_id=sku.pk, actor=TEST_ACTOR)
    assert caught.value.reasons == ["a retired SKU cannot be activated"]


def test_suspend_and_reactivate(publisher):
    sku = publish_sku(publisher)

    services.sku_suspend(sku_id=sku.pk, reason="license dispute", actor=TEST_ACTOR)
    sku.refresh_from_db()
    assert (sku.status, sku.status_reason) == (SkuStatus.SUSPENDED, "license dispute")

    with pytest.raises(TransitionRefused, match="only an active SKU can be suspended"):
        services.sku_suspend(sku_id=sku.pk, actor=TEST_ACTOR)

    services.sku_activate(sku_id=sku.pk, actor=TEST_ACTOR)
    sku.refresh_from_db()
    assert (sku.status, sku.status_reason) == (SkuStatus.ACTIVE, "")


def test_retire_is_final(publisher):
    sku = publish_sku(publisher)
    services.sku_retire(sku_id=sku.pk, reason="replaced", actor=TEST_ACTOR)

    with pytest.raises(TransitionRefused, match="already retired"):
        services.sku_retire(sku_id=sku.pk, actor=TEST_ACTOR)
    with pytest.raises(SkuLocked):
        services.sku_save(sku=Sku.objects.get(pk=sku.pk), actor=TEST_ACTOR)


# --- What an active SKU protects ---------------------------------------------------------------


def test_version_and_partner_are_locked_while_on_sale(publisher):
    sku = publish_sku(publisher)
    sku.version = "2.0.0"
    with pytest.raises(SkuLocked, match="version"):
        services.sku_save(sku=sku, actor=TEST_ACTOR)

    sku = Sku.objects.get(pk=sku.pk)
    sku.partner = PartnerFactory()
    with pytest.raises(SkuLocked, match="partner"):
        services.sku_save(sku=sku, actor=TEST_ACTOR)
    assert Sku.objects.get(pk=sku.pk).partner == publisher.partner


def test_price_changes_while_on_sale_but_the_slug_is_fixed_once_sold(publisher):
    sku = publish_sku(publisher)
    sku.price_amount = 2999
    services.sku_save(sku=sku, actor=TEST_ACTOR)
    assert Sku.objects.get(pk=sku.pk).price_amount == 2999

    services.sku_suspend(sku_id=sku.pk, actor=TEST_ACTOR)
    sku = Sku.objects.get(pk=sku.pk)
    sku.slug = "renamed"
    with pytest.raises(SkuLocked, match="slug"):
        services.sku_save(sku=sku, actor=TEST_ACTOR)


def test_a_plain_save_cannot_change_status_or_artifact(publisher):
    sku = publish_sku(publisher, activate=False)
    stale = Sku.objects.get(pk=sku.pk)
    stale.status = SkuStatus.ACTIVE
    stale.manifest_status = ManifestStatus.VERIFIED
    stale.artifact = None

    services.sku_save(sku=stale, actor=TEST_ACTOR)

    sku.refresh_from_db()
    assert sku.status == SkuStatus.DRAFT
    assert sku.artifact is not None


def test_artifact_and_manifest_are_locked_while_on_sale(publisher):
    sku = publish_sku(publisher)

    with pytest.raises(SkuLocked, match="artifact can only change"):
        services.sku_artifact_upload(
            sku=sku, content=io.BytesIO(b"x"), filename="x.zip", actor=TEST_ACTOR
        )
    with pytest.raises(SkuLocked, match="manifest can only change"):
        attach_signed(sku, publisher.key)


# --- Manifests ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"artifact": {}}', "must name its artifact"),
        ('{"artifact": {"sha256": "XYZ"}}', "64 lowercase hexadecimal"),
        ('{"artifact": {"sha256": "' + "a" * 64 + '"}, "ratio": 0.5}', "floating-point"),
    ],
)
def test_malformed_manifests_are_refused_and_nothing_changes(publisher, manifest, message):
    sku = upload(SkuFactory(partner=publisher.partner))

    with pytest.raises(InvalidManifest, match=message):
        services.sku_manifest_attach(
            sku_id=sku.pk, manifest=manifest, signature="c2ln", actor=TEST_ACTOR
        )

    sku.refresh_from_db()
    assert sku.manifest is None
    assert sku.manifest_status == ManifestStatus.MISSING


@pytest.mark.parametrize("signature", ["", "   ", "not base64!"])
def test_missing_or_garbled_signatures_are_refused(publisher, signature):
    sku = upload(SkuFactory(partner=publisher.partner))
    with pytest.raises(InvalidManifest, match="signature"):
        services.sku_manifest_attach(
            sku_id=sku.pk,
            manifest=manifest_for(sku, sku.artifact),
            signature=signature,
            actor=TEST_ACTOR,
        )


def test_signature_may_be_urlsafe_unpadded_base64(publisher):
    sku = upload(SkuFactory(partner=publisher.partner))
    manifest = manifest_for(sku, sku.artifact)
    raw = base64.b64decode(sign_manifest(publisher.key, manifest))
    signature = base64.urlsafe_b64encode(raw).decode().rstrip("=")

    services.sku_manifest_attach(
        sku_id=sku.pk, manifest=manifest, signature=signature, actor=TEST_ACTOR
    )
    check = services.sku_manifest_verify(sku_id=sku.pk, actor=TEST_ACTOR)

    assert check.status == ManifestStatus.VERIFIED


def test_manifest_check_names_every_field_that_is_wrong():
    with pytest.raises(InvalidManifest) as caught:
        services.manifest_check(manifest="  ", signature="not base64!")

    assert caught.value.errors == {
        "manifest": ["The manifest is missing: paste the one the signature was made over."],
        "manifest_signature": ["The manifest's signature is not base64."],
    }


# --- Splits ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shares", "problem"),
    [
        ([9000], "the shares sum to 9,000 basis points, not 10,000"),
        ([6000, 6000], "the shares sum to 12,000 basis points, not 10,000"),
        ([10_000, 0], "has 0 basis points; each share is 1 to 10,000"),
    ],
)
def test_splits_that_do_not_sum_to_10000_are_refused_and_nothing_is_written(
    publisher, shares, problem
):
    sku = SkuFactory(partner=publisher.partner)
    services.sku_splits_set(sku_id=sku.pk, splits=[(publisher.partner, 10_000)], actor=TEST_ACTOR)
    partners = [publisher.partner, PartnerFactory()]

    with pytest.raises(InvalidSplits) as caught:
        services.sku_splits_set(
            sku_id=sku.pk, splits=list(zip(partners, shares, strict=False)), actor=TEST_ACTOR
        )

    assert any(message.endswith(problem) for message in caught.value.errors["splits"])
    assert list(RoyaltySplit.objects.values_list("partner__slug", "basis_points")) == [
        ("acme", 10_000)
    ]


def test_a_partner_may_appear_once_in_the_splits(publisher):
    sku = SkuFactory(partner=publisher.partner)
    with pytest.raises(InvalidSplits, match="acme appears more than once"):
        services.sku_splits_set(
            sku_id=sku.pk,
            splits=[(publisher.partner, 5000), (publisher.partner, 5000)],
            actor=TEST_ACTOR,
        )


def test_splits_are_replaced_as_a_whole(publisher):
    sku = publish_sku(publisher)
    creator = PartnerFactory(slug="creator")

    services.sku_splits_set(
        sku_id=sku.pk, splits=[(publisher.partner, 7000), (creator, 3000)], actor=TEST_ACTOR
    )

    assert set(RoyaltySplit.objects.values_list("partner__slug", "basis_points")) == {
        ("acme", 7000),
        ("creator", 3000),
    }
    with pytest.raises(InvalidSplits, match="a SKU on sale must have royalty splits"):
        services.sku_splits_set(sku_id=sku.pk, splits=[], actor=TEST_ACTOR)


# --- Partner keys ------------------------------------------------------------------------------


def test_keys_register_from_base64_or_pem_with_a_fingerprint():
    partner = PartnerFactory()
    key = new_signing_key()

    from_pem = services.partner_key_register(
        partner=partner, key_id="pem", public_key=public_key_pem(key), actor=TEST_ACTOR
    )

    assert from_pem.public_key == public_key_b64(key)
    assert len(from_pem.fingerprint) == 64
    with pytest.raises(InvalidPartnerKey):
        services.partner_key_register(
            partner=partner, key_id="b64", public_key=public_key_b64(key), actor=TEST_ACTOR
        )


@pytest.mark.parametrize(
    ("public_key", "message"),
    [
        ("not a key!", "neither base64 nor PEM"),
        (base64.b64encode(b"short").decode(), "32 bytes; this one is 5"),
        ("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----", "cannot be read"),
    ],
)
def test_invalid_keys_are_refused(public_key, message):
    partner = PartnerFactory()
    with pytest.raises(InvalidPartnerKey, match=message):
        services.partner_key_register(
            partner=partner, key_id="k", public_key=public_key, actor=TEST_ACTOR
        )
    assert not partner.keys.exists()


def test_a_key_that_clashes_is_refused_at_each_field_it_clashes_on(publisher):
    other = PartnerFactory()
    services.partner_key_register(
        partner=other, key_id="k1", public_key=public_key_b64(new_signing_key()), actor=TEST_ACTOR
    )

    with pytest.raises(InvalidPartnerKey) as caught:
        services.partner_key_build(
            partner=other, key_id="k1", public_key=public_key_pem(publisher.key)
        )

    assert caught.value.errors == {
        "key_id": ["The partner already has a key with this id; give the new key another id."],
        "public_key": ["This key is already registered as acme/k1."],
    }
    # A partner not saved yet has no key ids to clash with.
    fresh = services.partner_key_build(
        partner=Partner(slug="new"), key_id="k1", public_key=public_key_pem(new_signing_key())
    )
    assert fresh.pk is None
    assert len(fresh.public_key) == 44  # base64 of the raw 32 bytes


def test_revoking_a_key_takes_the_skus_it_verified_off_sale(publisher):
    on_sale = publish_sku(publisher)
    draft = publish_sku(publisher, activate=False)
    services.sku_manifest_verify(sku_id=draft.pk, actor=TEST_ACTOR)
    key = publisher.partner.keys.get()

    services.partner_key_revoke(key_pk=key.pk, reason="leaked", actor=TEST_ACTOR)

    key.refresh_from_db()
    assert key.status == KeyStatus.REVOKED
    on_sale.refresh_from_db()
    assert on_sale.status == SkuStatus.SUSPENDED
    assert on_sale.status_reason == "manifest signing key 'k1' was revoked"
    assert on_sale.manifest_status == ManifestStatus.REJECTED
    draft.refresh_from_db()
    assert draft.status == SkuStatus.DRAFT
    assert draft.manifest_status == ManifestStatus.REJECTED
    # and the revoked key no longer verifies anything
    assert refusal(draft)[0].startswith("the manifest signature was rejected")


# --- Categories --------------------------------------------------------------------------------


def test_category_paths_follow_moves_of_a_subtree():
    software = CategoryFactory(slug="software")
    tools = CategoryFactory(slug="tools", parent=software)
    linters = CategoryFactory(slug="linters", parent=tools)
    assets = CategoryFactory(slug="assets")

    tools.parent = assets
    services.category_save(category=tools, actor=TEST_ACTOR)

    linters.refresh_from_db()
    assert linters.path == "assets/tools/linters/"
    assert software.path == "software/"


def test_a_category_cannot_go_under_itself():
    root = CategoryFactory(slug="root")
    child = CategoryFactory(slug="child", parent=root)

    root.parent = child
    with pytest.raises(InvalidCategory, match="under itself"):
        services.category_save(category=root, actor=TEST_ACTOR)
    root.refresh_from_db()
    assert root.parent is None


def test_a_category_with_skus_cannot_be_deleted(publisher):
    sku = SkuFactory(partner=publisher.partner)
    with pytest.raises(InvalidCategory, match="still has"):
        services.category_delete(category=sku.category, actor=TEST_ACTOR)


@pytest.mark.parametrize("entitlements", [{"pro": True}, "pro", ["pro", ""], [1]])
def test_entitlements_must_be_a_list_of_names(publisher, entitlements):
    sku = SkuFactory(partner=publisher.partner)
    sku.license_entitlements = entitlements

    with pytest.raises(services.InvalidSku, match="list of feature names") as caught:
        services.sku_save(sku=sku, actor=TEST_ACTOR)
    assert list(caught.value.errors) == ["license_entitlements"]
    assert Sku.objects.get(pk=sku.pk).license_entitlements == []


def test_no_entitlements_are_stored_as_an_empty_list(publisher):
    sku = SkuFactory(partner=publisher.partner)
    sku.license_entitlements = {}

    services.sku_save(sku=sku, actor=TEST_ACTOR)

    assert Sku.objects.get(pk=sku.pk).license_entitlements == []
