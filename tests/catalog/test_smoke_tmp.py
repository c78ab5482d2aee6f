import pytest

from tests.catalog.factories import publish_sku


@pytest.mark.django_db
def test_smoke(api_client, publisher):
    sku = publish_sku(publisher)
    r = api_client.get("/api/v1/skus")
    assert r.status_code == 200
    assert [x["slug"] for x in r.json()["results"]] == [sku.slug]


def test_worker(celery_worker, publisher):
    from catalog.models import Sku
    from tests.support.worker import wait_until
    sku = publish_sku(publisher, activate=False)
    Sku.objects.filter(pk=sku.pk).update(manifest_status="pending")
    from catalog.tasks import sku_verify_manifest
    sku_verify_manifest.delay(sku.pk)
    wait_until(lambda: Sku.objects.get(pk=sku.pk).manifest_status == "verified", worker=celery_worker)


def test_s3(s3_storage, publisher):
    sku = publish_sku(publisher)
    obj = s3_storage.client.get_object(Bucket=s3_storage.name, Key=sku.artifact.storage_key)
    assert len(obj["Body"].read()) == 4096
