"""The audit events the catalog's services append: which, with what data, by whom, and none
for a change that was refused, did nothing or was rolled back."""

import hashlib
import io
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.files.storage import default_storage
from django.core.management import call_command
from django.db import transaction
from django.utils import timezone

from audit.models import AuditEvent
from audit.sealer import seal_all
from catalog import services
from catalog.exceptions import (
    InvalidCategory,
    InvalidPartnerKey,
    InvalidSplits,
    SkuLocked,
    TransitionRefused,
)
from catalog.manifests import manifest_for
from catalog.models import Category, ManifestStatus, Partner, Sku, SkuStatus
from catalog.tasks import artifact_integrity_check, artifact_orphans_delete, sku_manifest_verify
from marketplace.actors import Actor
from marketplace.canonical import canonical_json
from marketplace.models import User
from tests.catalog.factories import (
    CategoryFactory,
    PartnerFactory,
    Publisher,
    SkuFactory,
    publish_sku,
)
from tests.support.keys import new_signing_key, public_key_b64, sign_manifest
from tests.support.net import free_port

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/catalog/sku/"


class AuditLog:
    """What was appended to the audit log since the fixture was set up (tests ask for it after
    the fixtures that write) or since the last `take`. By insertion order (`id`): on PostgreSQL
    events get their sequence only when sealed, after their transaction commits."""

    def __init__(self) -> None:
        self.mark = self._last()

    @staticmethod
    def _last() -> int:
        return AuditEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0

    def events(self) -> list[AuditEvent]:
        return list(AuditEvent.objects.filter(id__gt=self.mark).order_by("id"))

    def take(self) -> list[tuple[str, str, str, dict[str, Any]]]:
        """(action, subject type, subject id, data) of each new event; later calls see only
        what was appended after this one."""
        new = [
            (event.action, event.subject_type, event.subject_id, event.data)
            for event in self.events()
        ]
        self.mark = self._last()
        return new

    def actors(self) -> set[tuple[str, str]]:
        return {(event.actor_type, event.actor_id) for event in self.events()}


@pytest.fixture
def log() -> AuditLog:
    return AuditLog()


@pytest.fixture
def staff(content_ops: User) -> Actor:
    return Actor.of_user(content_ops)


def upload(sku: Sku, content: bytes, actor: Actor, filename: str = "pkg.zip") -> Sku:
    services.sku_artifact_upload(
        sku=sku, content=io.BytesIO(content), filename=filename, actor=actor
    )
    sku.refresh_from_db()
    return sku


def attach_signed(sku: Sku, publisher: Publisher, actor: Actor) -> dict[str, Any]:
    manifest = manifest_for(sku, sku.artifact)
    services.sku_manifest_attach(
        sku_id=sku.pk,
        manifest=manifest,
        signature=sign_manifest(publisher.key, manifest),
        actor=actor,
    )
    return manifest


def sku_row(sku: Sku) -> tuple[str, str]:
    return ("sku", str(sku.pk))


# --- Partners and keys -------------------------------------------------------------------------


def test_creating_and_changing_a_partner(staff, log):
    partner = services.partner_save(
        partner=Partner(
            slug="umbra",
            name="Umbra",
            kind="creator",
            description="Long text.",
            contract_reference="CTR-1",
        ),
        actor=staff,
    )
    [created] = log.take()
    assert created == (
        "partner.created",
        "partner",
        str(partner.pk),
        {
            "slug": "umbra",
            "name": "Umbra",
            "kind": "creator",
            "legal_name": "",
            "contact_email": "",
            "website": "",
            "contract_reference": "CTR-1",
            "payout_reference": "",
            "is_active": True,
        },
    )

    partner = Partner.objects.get(pk=partner.pk)
    partner.name = "Umbra Studio"
    partner.is_active = False
    partner.description = "Other long text."
    services.partner_save(partner=partner, actor=staff)

    assert log.take() == [
        (
            "partner.updated",
            "partner",
            str(partner.pk),
            {
                "changed": ["description", "is_active", "name"],
                "before": {"is_active": True, "name": "Umbra"},
                "after": {"is_active": False, "name": "Umbra Studio"},
            },
        )
    ]

    services.partner_save(partner=Partner.objects.get(pk=partner.pk), actor=staff)
    assert log.take() == []  # nothing changed, nothing recorded


def test_event_actor_is_the_staff_users_uuid(staff, content_ops, log):
    PartnerFactory.create()  # through TEST_ACTOR
    services.partner_save(partner=Partner(slug="p", name="P", kind="creator"), actor=staff)

    events = log.events()
    assert [(e.actor_type, e.actor_id) for e in events] == [
        ("system", "tests"),
        ("staff", str(content_ops.uuid)),
    ]


def test_registering_and_revoking_a_key_records_what_it_took_off_sale(publisher, staff, log):
    on_sale = publish_sku(publisher, slug="on-sale")
    draft = publish_sku(publisher, slug="draft", activate=False)
    services.sku_manifest_verify(sku_id=draft.pk, actor=staff)
    key = publisher.partner.keys.get()
    other_key = new_signing_key()
    log.take()

    registered = services.partner_key_register(
        partner=publisher.partner, key_id="k2", public_key=public_key_b64(other_key), actor=staff
    )
    services.partner_key_revoke(key_pk=key.pk, reason="leaked", actor=staff)

    partner = ("partner", str(publisher.partner.pk))
    rejected = "signed with key 'k1', revoked: leaked"
    assert log.take() == [
        (
            "partner.key_registered",
            *partner,
            {"key_id": "k2", "fingerprint": registered.fingerprint},
        ),
        (
            "partner.key_revoked",
            *partner,
            {
                "key_id": "k1",
                "fingerprint": key.fingerprint,
                "reason": "leaked",
                "manifests_rejected": ["on-sale", "draft"],
                "skus_suspended": ["on-sale"],
            },
        ),
        ("sku.manifest_rejected", *sku_row(on_sale), {"reason": rejected, "key_id": "k1"}),
        (
            "sku.suspended",
            *sku_row(on_sale),
            {"from": "active", "reason": "manifest signing key 'k1' was revoked"},
        ),
        ("sku.manifest_rejected", *sku_row(draft), {"reason": rejected, "key_id": "k1"}),
    ]

    services.partner_key_revoke(key_pk=key.pk, reason="again", actor=staff)
    assert log.take() == []


def test_a_refused_key_writes_no_event(publisher, staff, log):
    with pytest.raises(InvalidPartnerKey):
        services.partner_key_register(
            partner=publisher.partner,
            key_id="dup",
            public_key=public_key_b64(publisher.key),
            actor=staff,
        )
    assert log.take() == []


# --- Categories --------------------------------------------------------------------------------


def test_category_created_updated_moved_and_deleted(staff, log):
    tools = services.category_save(
        category=Category(slug="tools", name="Tools", description="All of them."), actor=staff
    )
    software = services.category_save(
        category=Category(slug="software", name="Software"), actor=staff
    )
    row = ("category", str(tools.pk))
    assert log.take() == [
        (
            "category.created",
            *row,
            {"slug": "tools", "name": "Tools", "parent": None, "path": "tools/"},
        ),
        (
            "category.created",
            "category",
            str(software.pk),
            {"slug": "software", "name": "Software", "parent": None, "path": "software/"},
        ),
    ]

    tools.name = "Dev tools"
    tools.description = "Some of them."
    services.category_save(category=tools, actor=staff)
    tools.parent = software
    services.category_save(category=tools, actor=staff)
    services.category_save(category=tools, actor=staff)  # no change
    assert log.take() == [
        (
            "category.updated",
            *row,
            {
                "changed": ["description", "name"],
                "before": {"name": "Tools"},
                "after": {"name": "Dev tools"},
            },
        ),
        (
            "category.moved",
            *row,
            {
                "changed": ["parent", "path"],
                "before": {"parent": None, "path": "tools/"},
                "after": {"parent": "software", "path": "software/tools/"},
            },
        ),
    ]

    with pytest.raises(InvalidCategory):
        services.category_delete(category=software, actor=staff)  # it holds tools
    software.parent = tools
    with pytest.raises(InvalidCategory):
        services.category_save(category=software, actor=staff)  # a cycle
    assert log.take() == []

    services.category_delete(category=Category.objects.get(pk=tools.pk), actor=staff)
    assert log.take() == [
        ("category.deleted", *row, {"slug": "tools", "path": "software/tools/"}),
    ]


# --- SKUs --------------------------------------------------------------------------------------


def test_creating_and_changing_a_sku(publisher, staff, log):
    category = CategoryFactory(slug="kits")
    log.take()
    sku = services.sku_save(
        sku=Sku(
            slug="kit",
            title="Kit",
            description="Long.",
            category=category,
            partner=publisher.partner,
            price_amount=1999,
            currency="USD",
            version="1.0.0",
            license_entitlements=["standard"],
        ),
        actor=staff,
    )
    assert log.take() == [
        (
            "sku.created",
            *sku_row(sku),
            {
                "slug": "kit",
                "title": "Kit",
                "summary": "",
                "category": "kits",
                "partner": "acme",
                "version": "1.0.0",
                "price_amount": 1999,
                "currency": "USD",
                "license_duration_days": None,
                "license_seats": 1,
                "license_entitlements": ["standard"],
                "license_terms_url": "",
                "preview_enabled": False,
                "preview_ttl_seconds": 900,
            },
        )
    ]

    edited = Sku.objects.get(pk=sku.pk)
    edited.price_amount = 2499
    edited.description = "Longer."
    edited.license_entitlements = ["standard", "pro"]
    edited.category = CategoryFactory(slug="bundles")
    log.take()
    services.sku_save(sku=edited, actor=staff)
    services.sku_save(sku=Sku.objects.get(pk=sku.pk), actor=staff)  # no change
    assert log.take() == [
        (
            "sku.updated",
            *sku_row(sku),
            {
                "changed": ["category", "description", "license_entitlements", "price_amount"],
                "before": {
                    "category": "kits",
                    "license_entitlements": ["standard"],
                    "price_amount": 1999,
                },
                "after": {
                    "category": "bundles",
                    "license_entitlements": ["standard", "pro"],
                    "price_amount": 2499,
                },
            },
        )
    ]


def test_a_refused_sku_change_writes_no_event(publisher, staff, log):
    sku = publish_sku(publisher)
    log.take()
    sku.version = "2.0.0"
    with pytest.raises(SkuLocked):
        services.sku_save(sku=sku, actor=staff)
    assert log.take() == []


def test_artifact_upload_and_manifest_attach(publisher, staff, log):
    sku = SkuFactory(partner=publisher.partner)
    log.take()

    upload(sku, b"first build", staff, filename="v1.zip")
    first = sku.artifact
    upload(sku, b"second build", staff, filename="v2.zip")
    second = sku.artifact
    manifest = attach_signed(sku, publisher, staff)

    assert log.take() == [
        (
            "sku.artifact_uploaded",
            *sku_row(sku),
            {
                "artifact_id": first.pk,
                "filename": "v1.zip",
                "size": 11,
                "sha256": hashlib.sha256(b"first build").hexdigest(),
                "replaced_sha256": None,
            },
        ),
        (
            "sku.artifact_uploaded",
            *sku_row(sku),
            {
                "artifact_id": second.pk,
                "filename": "v2.zip",
                "size": 12,
                "sha256": hashlib.sha256(b"second build").hexdigest(),
                "replaced_sha256": first.sha256,
            },
        ),
        (
            "sku.manifest_attached",
            *sku_row(sku),
            {
                "manifest_sha256": hashlib.sha256(canonical_json(manifest)).hexdigest(),
                "artifact_sha256": second.sha256,
            },
        ),
    ]


def test_activation_records_the_check_then_the_activation(publisher, staff, log):
    sku = publish_sku(publisher, activate=False)
    log.take()

    services.sku_activate(sku_id=sku.pk, actor=staff)

    assert log.take() == [
        ("sku.manifest_verified", *sku_row(sku), {"key_id": "k1"}),
        (
            "sku.activated",
            *sku_row(sku),
            {"from": "draft", "artifact_sha256": sku.artifact.sha256, "manifest_key_id": "k1"},
        ),
    ]


def test_a_refused_activation_records_no_activation(publisher, staff, log):
    empty = SkuFactory(partner=publisher.partner)
    unsplit = publish_sku(publisher, activate=False, slug="unsplit")
    services.sku_splits_set(sku_id=unsplit.pk, splits=[], actor=staff)
    log.take()

    with pytest.raises(TransitionRefused):
        services.sku_activate(sku_id=empty.pk, actor=staff)
    assert log.take() == []

    with pytest.raises(TransitionRefused):
        services.sku_activate(sku_id=unsplit.pk, actor=staff)
    # The fresh check of the manifest is a result of its own; the activation did not happen.
    assert log.take() == [("sku.manifest_verified", *sku_row(unsplit), {"key_id": "k1"})]


def test_a_rejected_manifest_is_recorded_with_its_reason(publisher, staff, log):
    sku = upload(SkuFactory(partner=publisher.partner), b"bytes", staff)
    manifest = manifest_for(sku, sku.artifact)
    services.sku_manifest_attach(
        sku_id=sku.pk,
        manifest=manifest,
        signature=sign_manifest(new_signing_key(), manifest),
        actor=staff,
    )
    log.take()

    check = services.sku_manifest_verify(sku_id=sku.pk, actor=staff)

    assert check.status == ManifestStatus.REJECTED
    assert log.take() == [
        ("sku.manifest_rejected", *sku_row(sku), {"reason": check.detail, "key_id": ""})
    ]


def test_an_unreachable_kernel_is_recorded_once_not_at_every_retry(
    publisher, staff, kernel, settings, log
):
    sku = publish_sku(publisher, activate=False)
    settings.KERNEL_URL = f"https://127.0.0.1:{free_port()}"
    log.take()

    first = services.sku_manifest_verify(sku_id=sku.pk, actor=staff)
    services.sku_manifest_verify(sku_id=sku.pk, actor=staff)
    services.sku_manifest_verify(sku_id=sku.pk, actor=staff)

    assert first.status == ManifestStatus.UNAVAILABLE
    assert log.take() == [
        ("sku.manifest_unavailable", *sku_row(sku), {"detail": first.detail}),
    ]


def test_the_workers_verification_is_the_services(publisher, log):
    sku = publish_sku(publisher, activate=False)
    log.take()

    assert sku_manifest_verify(sku.pk) == ManifestStatus.VERIFIED

    [event] = log.events()
    assert (event.action, event.actor_type, event.actor_id) == (
        "sku.manifest_verified",
        "service",
        "catalog-worker",
    )


def test_suspend_and_retire_record_their_reason(publisher, staff, log):
    sku = publish_sku(publisher)
    log.take()

    services.sku_suspend(sku_id=sku.pk, reason="DMCA notice", actor=staff)
    with pytest.raises(TransitionRefused):
        services.sku_suspend(sku_id=sku.pk, reason="again", actor=staff)
    services.sku_retire(sku_id=sku.pk, reason="replaced", actor=staff)

    assert log.take() == [
        ("sku.suspended", *sku_row(sku), {"from": "active", "reason": "DMCA notice"}),
        ("sku.retired", *sku_row(sku), {"from": "suspended", "reason": "replaced"}),
    ]


def test_splits_changes_record_before_and_after(publisher, staff, log):
    creator = PartnerFactory(slug="creator")
    sku = publish_sku(publisher, activate=False)
    log.take()

    services.sku_splits_set(
        sku_id=sku.pk, splits=[(creator, 3000), (publisher.partner, 7000)], actor=staff
    )
    services.sku_splits_set(
        sku_id=sku.pk, splits=[(publisher.partner, 7000), (creator, 3000)], actor=staff
    )  # the same shares: nothing to record
    with pytest.raises(InvalidSplits):
        services.sku_splits_set(sku_id=sku.pk, splits=[(creator, 9000)], actor=staff)

    assert log.take() == [
        (
            "sku.splits_changed",
            *sku_row(sku),
            {
                "before": [{"partner": "acme", "basis_points": 10_000}],
                "after": [
                    {"partner": "acme", "basis_points": 7000},
                    {"partner": "creator", "basis_points": 3000},
                ],
            },
        )
    ]


# --- Artifacts in storage ----------------------------------------------------------------------


def test_a_failed_integrity_check_is_recorded_with_both_hashes(publisher, log):
    sku = publish_sku(publisher, content=b"signed bytes")
    intact = publish_sku(publisher, slug="intact")
    Path(default_storage.path(sku.artifact.storage_key)).write_bytes(b"other bytes")
    log.take()

    assert artifact_integrity_check(intact.artifact_id) is True
    assert log.take() == []

    assert artifact_integrity_check(sku.artifact_id) is False

    assert log.actors() == {("service", "catalog-worker")}
    reason = "artifact package.zip changed in storage since upload"
    assert log.take() == [
        (
            "artifact.integrity_failed",
            "artifact",
            str(sku.artifact_id),
            {
                "sku": sku.slug,
                "storage_key": sku.artifact.storage_key,
                "expected_sha256": hashlib.sha256(b"signed bytes").hexdigest(),
                "actual_sha256": hashlib.sha256(b"other bytes").hexdigest(),
                "expected_size": 12,
                "actual_size": 11,
                "skus_suspended": [sku.slug],
            },
        ),
        ("sku.suspended", *sku_row(sku), {"from": "active", "reason": reason}),
    ]
    sku.refresh_from_db()
    assert sku.status == SkuStatus.SUSPENDED


def test_deleting_orphans_is_recorded_with_their_keys(publisher, log):
    stored = services.artifact_store(content=io.BytesIO(b"never attached"), filename="o.zip")
    log.take()

    assert artifact_orphans_delete() == 0  # too young
    assert log.take() == []

    removed = services.artifact_orphans_delete(
        older_than=timezone.now() + timedelta(seconds=5), actor=Actor.service("catalog-worker")
    )

    assert removed == [stored.storage_key]
    events = log.events()
    assert [
        (e.action, e.actor_type, e.actor_id, e.subject_type, e.subject_id, e.data) for e in events
    ] == [
        (
            "artifact.orphans_deleted",
            "service",
            "catalog-worker",
            "storage",
            "artifacts",
            {"count": 1, "keys": [stored.storage_key]},
        )
    ]


# --- Transactions ------------------------------------------------------------------------------


def test_a_rolled_back_change_leaves_no_event(publisher, staff, log):
    sku = publish_sku(publisher)
    log.take()

    appended: list[str] = []

    def suspend_then_fail() -> None:
        with transaction.atomic():
            services.sku_suspend(sku_id=sku.pk, reason="oops", actor=staff)
            appended.extend(event.action for event in log.events())
            raise RuntimeError("something after the change failed")

    with pytest.raises(RuntimeError):
        suspend_then_fail()

    assert appended == ["sku.suspended"]  # it was there, inside the transaction

    assert AuditEvent.objects.filter(action="sku.suspended").count() == 0
    assert Sku.objects.get(pk=sku.pk).status == SkuStatus.ACTIVE
    seal_all()
    call_command("audit_verify", stdout=io.StringIO())  # the chain is whole


# --- The admin ---------------------------------------------------------------------------------


@pytest.fixture
def ops_client(client, content_ops):
    client.force_login(content_ops)
    return client


def test_admin_actions_are_recorded_as_the_staff_user(ops_client, content_ops, publisher, log):
    sku = publish_sku(publisher, activate=False)
    log.take()

    ops_client.post(CHANGELIST, {"action": "activate", "_selected_action": [sku.pk]})
    ops_client.post(
        CHANGELIST,
        {"action": "suspend", "_selected_action": [sku.pk], "reason": "DMCA notice", "apply": "1"},
    )

    assert log.actors() == {("staff", str(content_ops.uuid))}
    assert [(action, data.get("reason")) for action, *_, data in log.take()] == [
        ("sku.manifest_verified", None),
        ("sku.activated", None),
        ("sku.suspended", "DMCA notice"),
    ]


def test_saving_a_sku_in_the_admin_records_the_change_as_the_staff_user(
    ops_client, content_ops, publisher, log
):
    sku = publish_sku(publisher)
    url = f"/admin/catalog/sku/{sku.pk}/change/"
    page = ops_client.get(url)
    data = {
        key: value
        for key, value in page.context["adminform"].form.initial.items()
        if value is not None and key not in ("manifest_signature",)
    }
    split = sku.splits.get()
    data |= {
        "category": sku.category_id,
        "license_entitlements": "[]",
        "price_amount": "2999",
        "splits-TOTAL_FORMS": "1",
        "splits-INITIAL_FORMS": "1",
        "splits-MIN_NUM_FORMS": "0",
        "splits-MAX_NUM_FORMS": "1000",
        "splits-0-id": split.pk,
        "splits-0-sku": sku.pk,
        "splits-0-partner": publisher.partner.pk,
        "splits-0-basis_points": "10000",
    }
    log.take()

    response = ops_client.post(url, data)

    assert response.status_code == 302
    assert log.actors() == {("staff", str(content_ops.uuid))}
    assert log.take() == [
        (
            "sku.updated",
            *sku_row(sku),
            {
                "changed": ["price_amount"],
                "before": {"price_amount": 1999},
                "after": {"price_amount": 2999},
            },
        )
    ]


def test_a_refused_admin_action_writes_no_event(ops_client, publisher, log):
    draft = SkuFactory(partner=publisher.partner)
    log.take()

    ops_client.post(CHANGELIST, {"action": "activate", "_selected_action": [draft.pk]})
    ops_client.post(
        CHANGELIST,
        {"action": "suspend", "_selected_action": [draft.pk], "reason": "x", "apply": "1"},
    )

    assert log.take() == []
