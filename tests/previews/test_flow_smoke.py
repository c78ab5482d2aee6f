import pytest

from previews.models import SessionStatus
from tests.previews.factories import previewable_sku


@pytest.mark.django_db(transaction=True)
def test_a_buyer_opens_a_sandbox_preview_and_sees_it(celery_worker, buyer_client):
    sku = previewable_sku()
    answer = buyer_client.post(f"/api/v1/skus/{sku.slug}/previews", HTTP_PREFER="wait=5")
    assert answer.status_code == 201, answer.content
    body = answer.json()
    assert body["status"] == SessionStatus.READY, celery_worker.log()[-3000:]
    page = buyer_client.get(f"/previews/{body['token']}/")
    assert page.status_code == 200
    assert b"Hello from the preview" in b"".join(page.streaming_content)
