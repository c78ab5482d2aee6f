"""Catalog work that crosses the queue, run by a real worker process."""

from datetime import timedelta
from pathlib import Path

import pytest
from django.core.files.storage import default_storage
from django.utils import timezone

from catalog import services
from catalog.manifests import manifest_for
from catalog.models import Artifact, ManifestStatus, Sku, SkuStatus
from catalog.selectors import sku_activation_blockers
from catalog.tasks import (
    artifact_integrity_check,
    artifacts_check_integrity,
    manifests_reverify_unavailable,
)
from tests.catalog.factories import TEST_ACTOR, publish_sku
from tests.marketplace.test_outages import broker_at, closed_port
from tests.support.keys import sign_manifest
from tests.support.worker import wait_until

pytestmark = pytest.mark.worker


def test_an_attached_manifest_is_verified_by_the_worker(celery_worker, publisher):
    sku = publish_sku(publisher, activate=False)
    manifest = manifest_for(sku, sku.artifact) | {"note": "second build"}
    Sku.objects.filter(pk=sku.pk).update(manifest_status=ManifestStatus.MISSING)

    # Commits, then queues the check: nothing here verifies it (the worker may already have,
    # by the time this reads it back).
    attached = services.sku_manifest_attach(
        sku_id=sku.pk,
        manifest=manifest,
        signature=sign_manifest(publisher.key, manifest),
        actor=TEST_ACTOR,
    )
    assert attached.manifest_status == ManifestStatus.PENDING

    wait_until(
        lambda: Sku.objects.get(pk=sku.pk).manifest_status == ManifestStatus.VERIFIED,
        worker=celery_worker,
    )
    sku.refresh_from_db()
    assert sku.manifest_key_id == "k1"
    assert "catalog.tasks.sku_manifest_verify" in celery_worker.log()


def test_a_tampered_artifact_is_found_by_the_nightly_check_and_taken_off_sale(
    celery_worker, publisher
):
    intact = publish_sku(publisher, slug="intact")
    tampered = publish_sku(publisher, slug="tampered")
    stored = Path(default_storage.path(tampered.artifact.storage_key))
    content = bytearray(stored.read_bytes())
    content[-1] ^= 0x01  # a changed byte, whatever it was
    stored.write_bytes(bytes(content))

    artifacts_check_integrity.delay()

    wait_until(
        lambda: Artifact.objects.filter(integrity_ok__isnull=False).count() == 2,
        worker=celery_worker,
    )
    assert Artifact.objects.get(pk=intact.artifact_id).integrity_ok is True
    assert Artifact.objects.get(pk=tampered.artifact_id).integrity_ok is False
    tampered.refresh_from_db()
    assert tampered.status == SkuStatus.SUSPENDED
    assert tampered.status_reason == "artifact package.zip changed in storage since upload"
    assert Sku.objects.get(pk=intact.pk).status == SkuStatus.ACTIVE


@pytest.mark.django_db
def test_integrity_check_runs_twice_without_harm(publisher):
    sku = publish_sku(publisher)
    Path(default_storage.path(sku.artifact.storage_key)).unlink()

    assert artifact_integrity_check(sku.artifact_id) is False
    assert artifact_integrity_check(sku.artifact_id) is False  # already suspended: no error

    sku.refresh_from_db()
    assert sku.status == SkuStatus.SUSPENDED
    assert "the artifact failed its last integrity check; upload it again" in (
        sku_activation_blockers(sku)
    )


def test_a_check_whose_send_the_broker_lost_is_sent_by_the_sweep(
    celery_worker, publisher, settings, caplog
):
    sku = publish_sku(publisher, activate=False)
    # The check publish_sku's attach queued runs first: arriving late (behind the audit
    # sealer's tasks, say), it would verify the manifest attached below while the broker is down.
    wait_until(
        lambda: Sku.objects.get(pk=sku.pk).manifest_status == ManifestStatus.VERIFIED,
        worker=celery_worker,
    )
    manifest = manifest_for(sku, sku.artifact) | {"note": "second build"}
    Sku.objects.filter(pk=sku.pk).update(manifest_status=ManifestStatus.MISSING)
    real_broker = settings.CELERY_BROKER_URL

    broker_at(settings, f"redis://127.0.0.1:{closed_port()}/11")
    try:
        # The attach commits; the check's send fails after it and is only logged.
        services.sku_manifest_attach(
            sku_id=sku.pk,
            manifest=manifest,
            signature=sign_manifest(publisher.key, manifest),
            actor=TEST_ACTOR,
        )
    finally:
        broker_at(settings, real_broker)
    assert Sku.objects.get(pk=sku.pk).manifest_status == ManifestStatus.PENDING
    assert any("on_commit" in record.getMessage() for record in caplog.records)

    # Still fresh: a check may yet be on its way.
    assert manifests_reverify_unavailable.apply().get() == 0
    Sku.objects.filter(pk=sku.pk).update(updated_at=timezone.now() - timedelta(minutes=6))
    assert manifests_reverify_unavailable.apply().get() == 1

    wait_until(
        lambda: Sku.objects.get(pk=sku.pk).manifest_status == ManifestStatus.VERIFIED,
        worker=celery_worker,
    )
