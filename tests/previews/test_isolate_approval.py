"""Isolating the preview pool of every SKU takes a second Security member: the admin's Isolate
pool page files `previews.isolate_all`; nothing changes until another approves; then every open
session of every SKU is revoked and, with the pause, new ones are refused."""

from typing import Any

import pytest
from django.contrib.messages import get_messages

from accounts.approval_services import approval_approve, approval_request
from accounts.approvals import ApprovalOwnRequest, ApprovalRoleMissing
from accounts.models import ApprovalRequest, ApprovalStatus
from audit.models import AuditEvent
from marketplace.exceptions import InvalidInput
from marketplace.models import User
from marketplace.roles import SECURITY
from previews.approvals import ISOLATE_ALL
from previews.models import EndReason, MaterialKind, PreviewPause, PreviewSession, SessionStatus
from previews.services import preview_open
from tests.conftest import _staff
from tests.previews.factories import previewable_sku
from tests.support.approvals import approved, second_person

pytestmark = pytest.mark.django_db

ISOLATE = "/admin/previews/previewsession/isolate/"


@pytest.fixture
def security(db: None) -> User:
    return _staff("security@example.com", SECURITY)


@pytest.fixture
def tokens(db: None) -> list[str]:
    """Open sample previews of two SKUs, by two buyers."""
    found = []
    for n, slug in enumerate(["first-kit", "second-kit"]):
        sku = previewable_sku(MaterialKind.SAMPLE, slug=slug)
        viewer = User.objects.create_user(email=f"viewer{n}@example.com")
        found.append(preview_open(buyer=viewer, sku_slug=sku.slug).token)
    return found


def test_isolating_every_sku_waits_for_a_second_security_member(
    client, security, tokens, buyer_client
):
    client.force_login(security)

    filed = client.post(ISOLATE, {"sku": "", "reason": "sandbox breakout", "pause": "on"})

    assert filed.status_code == 302
    request = ApprovalRequest.objects.get(kind=ISOLATE_ALL)
    assert request.status == ApprovalStatus.PENDING
    assert request.params == {"reason": "sandbox breakout", "pause": True}
    assert request.summary.startswith(
        "Isolate the preview pool: revoke every open preview session of every SKU (2 open now)"
    )
    (message,) = [str(m) for m in get_messages(filed.wsgi_request)]
    assert f"Request {request.pk} is filed" in message
    # Nothing has changed yet.
    assert PreviewSession.objects.open().count() == 2
    assert not PreviewPause.objects.exists()
    for token in tokens:
        assert client.get(f"/previews/{token}/").status_code == 200

    with pytest.raises(ApprovalOwnRequest):
        approval_approve(request.pk, by=security)
    assert PreviewSession.objects.open().count() == 2

    approver = second_person()
    done = approved(request.pk, by=approver)

    assert done.status == ApprovalStatus.APPLIED, done.error
    assert done.outcome["revoked"] == 2
    assert set(PreviewSession.objects.values_list("status", "end_reason")) == {
        (SessionStatus.ENDED, EndReason.REVOKED)
    }
    for token in tokens:
        gone = client.get(f"/previews/{token}/")
        assert (gone.status_code, gone.json()["reason"]) == (410, "revoked")
    pause = PreviewPause.objects.get()
    assert (pause.sku, pause.reason, pause.created_by) == (None, "sandbox breakout", approver)
    refused = buyer_client.post("/api/v1/skus/first-kit/previews")
    assert refused.status_code == 503
    assert refused.json()["type"].endswith("previews-paused")
    isolated = AuditEvent.objects.get(action="preview.pool_isolated")
    assert isolated.actor_id == str(approver.uuid)
    assert isolated.data == {"scope": "all", "reason": "sandbox breakout", "paused": True}


def test_with_a_threshold_of_one_it_applies_at_once(client, security, tokens, settings):
    settings.APPROVAL_THRESHOLD = 1
    client.force_login(security)

    client.post(ISOLATE, {"sku": "", "reason": "drill"})

    request = ApprovalRequest.objects.get(kind=ISOLATE_ALL)
    assert request.status == ApprovalStatus.APPLIED
    assert not PreviewSession.objects.open().exists()
    assert not PreviewPause.objects.exists()  # the pause was unticked


def test_only_security_files_it_and_a_reason_is_required(security, content_ops):
    with pytest.raises(ApprovalRoleMissing):
        approval_request(
            kind=ISOLATE_ALL,
            params={"reason": "x", "pause": True},
            reason="x",
            requested_by=content_ops,
        )
    for params in ({"reason": " ", "pause": True}, {"reason": "x", "pause": "yes"}, {}):
        with pytest.raises(InvalidInput):
            approval_request(kind=ISOLATE_ALL, params=params, reason="x", requested_by=security)
    assert not ApprovalRequest.objects.exists()


def test_the_pages_approve_button_applies_it(client, security, tokens):
    request = approval_request(
        kind=ISOLATE_ALL,
        params={"reason": "breakout", "pause": False},
        reason="breakout",
        requested_by=security,
    )
    approver = second_person()
    client.force_login(approver)

    answer: Any = client.post(f"/admin/accounts/approvalrequest/{request.pk}/approve/")

    assert answer.status_code == 302
    request.refresh_from_db()
    assert request.status == ApprovalStatus.APPLIED
    assert not PreviewSession.objects.open().exists()
