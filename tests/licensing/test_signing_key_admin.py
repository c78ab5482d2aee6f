"""The signing keys' admin: a read-only list that never shows private material, and the rotate
and revoke actions, which only Security (or a superuser) may run: they file two-person approval
requests, and once another Security member approves one the key-store services apply it, each
change audited with the approving staff member as its actor."""

from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages

from accounts.models import ApprovalRequest, ApprovalStatus
from audit.models import AuditEvent
from audit.signing_keys import signing_key_active
from marketplace.actors import ActorType
from marketplace.models import SigningKey, SigningKeyPurpose, SigningKeyStatus, User
from marketplace.roles import CONTENT_OPS, SECURITY
from tests.conftest import _staff
from tests.support.approvals import approved, second_person

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/marketplace/signingkey/"


def messages_of(response: Any) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def key_state() -> list[tuple[Any, ...]]:
    return list(
        SigningKey.objects.order_by("pk").values_list(
            "kid", "status", "retired_at", "revoked_at", "revoked_reason"
        )
    )


def events() -> list[tuple[str, str, str, str]]:
    return list(
        AuditEvent.objects.order_by("id").values_list(
            "action", "actor_type", "actor_id", "subject_id"
        )
    )


@pytest.fixture
def security_staff(db: None) -> User:
    return _staff("security@example.com", SECURITY)


@pytest.fixture
def security_client(client: Any, security_staff: User) -> Any:
    client.force_login(security_staff)
    return client


@pytest.fixture
def audit_key() -> SigningKey:
    return signing_key_active(purpose=SigningKeyPurpose.AUDIT)


@pytest.fixture
def license_key() -> SigningKey:
    return signing_key_active(purpose=SigningKeyPurpose.LICENSE)


def test_the_list_shows_the_keys_and_no_private_material(security_client, audit_key, license_key):
    response = security_client.get(CHANGELIST)

    assert response.status_code == 200
    assert {key.kid for key in response.context["cl"].result_list} == {
        audit_key.kid,
        license_key.kid,
    }
    assert set(response.context["action_form"].fields["action"].choices) >= {
        ("rotate", "Rotate the keys of the selected purposes (asks for approval)…"),
        ("revoke", "Revoke selected keys (asks for approval)…"),
    }
    page = response.content.decode()
    detail = security_client.get(f"{CHANGELIST}{audit_key.pk}/change/")
    assert detail.status_code == 200
    for body in (page, detail.content.decode()):
        assert audit_key.kid in body
        assert "private" not in body.lower()
        assert bytes(audit_key.private_key_sealed).hex() not in body
    assert "EdDSA" in page
    assert response.context["has_add_permission"] is False


def test_nobody_adds_changes_or_deletes_a_key_not_even_a_superuser(client, audit_key):
    client.force_login(User.objects.create_superuser("root@example.com", "x"))
    before = key_state()

    assert client.get(f"{CHANGELIST}add/").status_code == 403
    assert client.get(f"{CHANGELIST}{audit_key.pk}/delete/").status_code == 403
    response = client.post(f"{CHANGELIST}{audit_key.pk}/change/", {"status": "revoked"})

    assert response.status_code == 403
    assert key_state() == before


def rotate(client: Any, *keys: SigningKey, reason: str = "yearly rotation") -> Any:
    return client.post(
        CHANGELIST,
        {
            "action": "rotate",
            "_selected_action": [key.pk for key in keys],
            "apply": "1",
            "reason": reason,
        },
        follow=True,
    )


def test_rotate_files_a_request_and_the_second_persons_approval_rotates(
    security_client, security_staff, audit_key
):
    first_event = AuditEvent.objects.count()

    response = rotate(security_client, audit_key)

    assert response.status_code == 200
    request = ApprovalRequest.objects.get()
    assert (request.kind, request.params, request.requested_by) == (
        "signing_key.rotate",
        {"purpose": "audit"},
        security_staff,
    )
    assert f"{audit_key.kid} is retired (it still verifies what it signed)" in request.summary
    assert messages_of(response)[-1] == "1 rotation(s) filed for approval."
    assert key_state()[0][1] == SigningKeyStatus.ACTIVE  # nothing yet

    approver = second_person()
    approved(request.pk, by=approver)

    audit_key.refresh_from_db()
    assert audit_key.status == SigningKeyStatus.RETIRED
    assert audit_key.retired_at is not None
    new = SigningKey.objects.get(purpose=SigningKeyPurpose.AUDIT, status=SigningKeyStatus.ACTIVE)
    assert new.kid != audit_key.kid
    staff = (ActorType.STAFF, str(approver.uuid))
    key_events = [e for e in events()[first_event:] if e[0].startswith("signing_key.")]
    assert key_events == [
        ("signing_key.retired", *staff, audit_key.kid),
        ("signing_key.created", *staff, new.kid),
    ]
    request.refresh_from_db()
    assert request.outcome == {"new": new.kid, "retired": audit_key.kid}


def test_rotate_asks_for_a_reason_and_files_nothing_without_one(security_client, audit_key):
    before = events()

    page = security_client.post(
        CHANGELIST, {"action": "rotate", "_selected_action": [audit_key.pk]}
    )
    rotate(security_client, audit_key, reason="  ")

    assert page.templates[0].name == "admin/action_reason.html"
    assert not ApprovalRequest.objects.exists()
    assert events() == before


def test_rotate_files_one_request_per_purpose_whatever_the_number_of_keys_selected(
    security_client, audit_key
):
    retired = audit_key
    rotate(security_client, audit_key)
    approved(ApprovalRequest.objects.get().pk)
    active = SigningKey.objects.get(status=SigningKeyStatus.ACTIVE)

    rotate(security_client, retired, active)

    assert ApprovalRequest.objects.filter(status=ApprovalStatus.PENDING).count() == 1
    approved(ApprovalRequest.objects.get(status=ApprovalStatus.PENDING).pk)
    statuses = list(SigningKey.objects.order_by("pk").values_list("status", flat=True))
    assert statuses == ["retired", "retired", "active"]
    assert AuditEvent.objects.filter(action="signing_key.created").count() == 3


def test_revoke_asks_for_a_reason_and_changes_nothing_without_one(security_client, audit_key):
    before, before_events = key_state(), events()

    confirm = security_client.post(
        CHANGELIST, {"action": "revoke", "_selected_action": [audit_key.pk]}
    )
    empty = security_client.post(
        CHANGELIST,
        {"action": "revoke", "_selected_action": [audit_key.pk], "apply": "1", "reason": "  "},
    )

    assert confirm.status_code == 200
    assert confirm.templates[0].name == "admin/action_reason.html"
    assert audit_key.kid in confirm.content.decode()
    assert empty.status_code == 200
    assert empty.context["reason_missing"] is True
    assert key_state() == before
    assert events() == before_events


def test_revoke_with_a_reason_files_a_request_the_approval_revokes(
    security_client, security_staff, audit_key
):
    first_event = AuditEvent.objects.count()

    response = security_client.post(
        CHANGELIST,
        {
            "action": "revoke",
            "_selected_action": [audit_key.pk],
            "apply": "1",
            "reason": "leaked in a backup",
        },
        follow=True,
    )

    assert messages_of(response)[-1] == "1 revocation(s) filed for approval."
    request = ApprovalRequest.objects.get()
    assert request.params == {"kid": audit_key.kid, "reason": "leaked in a backup"}
    assert SigningKey.objects.get(pk=audit_key.pk).status == SigningKeyStatus.ACTIVE

    approver = second_person()
    approved(request.pk, by=approver)

    audit_key.refresh_from_db()
    assert (audit_key.status, audit_key.revoked_reason) == (
        SigningKeyStatus.REVOKED,
        "leaked in a backup",
    )
    assert audit_key.revoked_at is not None
    assert [e for e in events()[first_event:] if e[0].startswith("signing_key.")] == [
        ("signing_key.revoked", ActorType.STAFF, str(approver.uuid), audit_key.kid)
    ]
    assert AuditEvent.objects.get(action="signing_key.revoked").data["reason"] == (
        "leaked in a backup"
    )


def test_a_superuser_may_ask_for_a_rotation(client, audit_key):
    client.force_login(User.objects.create_superuser("root@example.com", "x"))

    rotate(client, audit_key)
    approved(ApprovalRequest.objects.get().pk)

    audit_key.refresh_from_db()
    assert audit_key.status == SigningKeyStatus.RETIRED


def test_other_staff_get_403_and_nothing_is_written(client, audit_key):
    client.force_login(_staff("content.ops@example.com", CONTENT_OPS))
    before, before_events = key_state(), events()

    assert client.get(CHANGELIST).status_code == 403
    rotate = client.post(CHANGELIST, {"action": "rotate", "_selected_action": [audit_key.pk]})
    revoke = client.post(
        CHANGELIST,
        {"action": "revoke", "_selected_action": [audit_key.pk], "apply": "1", "reason": "x"},
    )

    assert (rotate.status_code, revoke.status_code) == (403, 403)
    assert key_state() == before
    assert not ApprovalRequest.objects.exists()
    assert events() == before_events


def test_staff_who_may_only_view_get_no_actions_and_cannot_run_them(client, audit_key):
    # A view permission given to someone outside Security shows the list, never the actions.
    viewer = _staff("viewer@example.com", CONTENT_OPS)
    viewer.user_permissions.add(
        *Permission.objects.filter(
            content_type__app_label="marketplace", codename="view_signingkey"
        )
    )
    client.force_login(viewer)
    before, before_events = key_state(), events()

    listing = client.get(CHANGELIST)
    rotate = client.post(
        CHANGELIST, {"action": "rotate", "_selected_action": [audit_key.pk]}, follow=True
    )

    assert listing.status_code == 200
    assert listing.context["action_form"] is None
    assert rotate.status_code == 200
    assert key_state() == before
    assert events() == before_events
