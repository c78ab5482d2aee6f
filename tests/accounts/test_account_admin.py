"""Every change of an account's access made in the admin (active, staff, superuser, roles)
is recorded in the audit log with the change, by whom, naming the account by uuid."""

import pytest
from django.contrib.auth.models import Group

from accounts.approval_services import approval_approve
from accounts.models import ApprovalRequest
from audit.models import AuditEvent
from marketplace.models import User
from marketplace.roles import FINANCE, SECURITY, SUPPORT, roles_sync
from tests.conftest import _staff

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client):
    roles_sync()
    admin = User.objects.create_superuser(email="root@example.com", password="x-long-password-1")
    client.force_login(admin)
    client.admin = admin
    return client


def _form(user: User, **changes) -> dict:
    data = {
        "email": user.email,
        "display_name": user.display_name,
        "is_active": "on" if user.is_active else "",
        "is_staff": "on" if user.is_staff else "",
        "groups": [str(pk) for pk in user.groups.values_list("pk", flat=True)],
        "date_joined_0": user.date_joined.strftime("%Y-%m-%d"),
        "date_joined_1": user.date_joined.strftime("%H:%M:%S"),
    }
    data.update(changes)
    return {key: value for key, value in data.items() if value != ""}


def _roles(*names: str) -> list[str]:
    return [str(pk) for pk in Group.objects.filter(name__in=names).values_list("pk", flat=True)]


def test_access_taken_away_in_the_admin_is_saved_at_once_and_recorded(admin_client):
    user = User.objects.create_user(email="staff@example.com", is_staff=True)
    user.groups.add(*Group.objects.filter(name__in=[FINANCE, SECURITY, SUPPORT]))
    before = AuditEvent.objects.count()

    response = admin_client.post(
        f"/admin/marketplace/user/{user.pk}/change/",
        _form(user, groups=_roles(FINANCE, SECURITY), is_staff="on"),
    )

    assert response.status_code == 302, response.content
    [event] = AuditEvent.objects.order_by("id")[before:]
    assert (event.action, event.subject_type, event.subject_id) == (
        "account.access_changed",
        "user",
        str(user.uuid),
    )
    assert (event.actor_type, event.actor_id) == ("staff", str(admin_client.admin.uuid))
    assert event.data == {"roles_removed": [SUPPORT]}

    admin_client.post(
        f"/admin/marketplace/user/{user.pk}/change/",
        _form(User.objects.get(pk=user.pk), is_active="", groups=[]),
    )
    latest = AuditEvent.objects.order_by("-id").first()
    assert latest.data == {"is_active": False, "roles_removed": [FINANCE, SECURITY]}
    assert not ApprovalRequest.objects.exists()


def test_a_role_granted_in_the_admin_waits_for_a_second_person(admin_client):
    user = User.objects.create_user(email="staff@example.com", is_staff=True)
    user.groups.add(Group.objects.get(name=SUPPORT))
    url = f"/admin/marketplace/user/{user.pk}/change/"
    change = _form(user, groups=_roles(FINANCE, SECURITY), display_name="Ann")
    before = AuditEvent.objects.count()

    without_reason = admin_client.post(url, change)

    assert without_reason.status_code == 200  # the form again: a grant says why
    assert AuditEvent.objects.count() == before

    response = admin_client.post(url, {**change, "access_reason": "joins the on-call rota"})

    assert response.status_code == 302, response.content
    user.refresh_from_db()
    assert user.display_name == "Ann"  # the rest of the edit is saved
    assert set(user.groups.values_list("name", flat=True)) == {SUPPORT}
    request = ApprovalRequest.objects.get()
    assert (request.kind, request.status, request.requested_by) == (
        "role.grant",
        "pending",
        admin_client.admin,
    )
    assert request.params == {
        "user": str(user.uuid),
        "roles_added": [FINANCE, SECURITY],
        "roles_removed": [SUPPORT],
        "flags": {},
    }
    assert "adds Finance, Security; removes Support" in request.summary
    assert list(AuditEvent.objects.order_by("id")[before:].values_list("action", flat=True)) == [
        "approval.requested"
    ]


def test_making_someone_staff_in_the_admin_waits_and_applies_once_approved(admin_client):
    user = User.objects.create_user(email="new.hire@example.com")
    security = _staff("security@example.com", SECURITY)

    response = admin_client.post(
        f"/admin/marketplace/user/{user.pk}/change/",
        _form(user, is_staff="on", groups=_roles(SUPPORT), access_reason="new support hire"),
    )

    assert response.status_code == 302, response.content
    user.refresh_from_db()
    assert (user.is_staff, list(user.groups.all())) == (False, [])
    request = ApprovalRequest.objects.get()

    approval_approve(request.pk, by=security)

    user.refresh_from_db()
    assert user.is_staff
    assert list(user.groups.values_list("name", flat=True)) == [SUPPORT]
    event = AuditEvent.objects.filter(action="account.access_changed").get()
    assert (event.actor_id, event.data) == (
        str(security.uuid),
        {"is_staff": True, "roles_added": [SUPPORT]},
    )


def test_an_edit_that_changes_no_access_records_nothing(admin_client):
    user = User.objects.create_user(email="buyer@example.com")
    before = AuditEvent.objects.count()

    response = admin_client.post(
        f"/admin/marketplace/user/{user.pk}/change/", _form(user, display_name="Ann")
    )

    assert response.status_code == 302
    assert AuditEvent.objects.count() == before
    assert User.objects.get(pk=user.pk).display_name == "Ann"


def test_an_account_added_in_the_admin_is_recorded(admin_client):
    before = AuditEvent.objects.count()

    response = admin_client.post(
        "/admin/marketplace/user/add/",
        {
            "email": "new.staff@example.com",
            "password1": "Tr0ub4dor&3x!",
            "password2": "Tr0ub4dor&3x!",
        },
    )

    assert response.status_code == 302, response.content
    user = User.objects.get(email="new.staff@example.com")
    [event] = AuditEvent.objects.order_by("id")[before:]
    assert (event.action, event.subject_id) == ("account.created", str(user.uuid))
    assert event.data == {
        "is_active": True,
        "is_staff": False,
        "is_superuser": False,
        "roles": [],
    }


def test_a_refused_edit_records_nothing(admin_client):
    user = User.objects.create_user(email="staff2@example.com", is_staff=True)
    before = AuditEvent.objects.count()

    response = admin_client.post(
        f"/admin/marketplace/user/{user.pk}/change/",
        _form(user, email="not an email", groups=_roles(FINANCE)),
    )

    assert response.status_code == 200  # the form again, with its error
    assert AuditEvent.objects.count() == before
    assert not User.objects.get(pk=user.pk).groups.exists()


def test_a_password_set_in_the_admin_is_recorded_without_the_password(admin_client):
    user = User.objects.create_user(email="staff3@example.com", is_staff=True)
    before = AuditEvent.objects.count()
    url = f"/admin/marketplace/user/{user.pk}/password/"

    refused = admin_client.post(url, {"password1": "a", "password2": "b"})
    assert refused.status_code == 200
    assert AuditEvent.objects.count() == before

    response = admin_client.post(url, {"password1": "Tr0ub4dor&3x!", "password2": "Tr0ub4dor&3x!"})

    assert response.status_code == 302
    [event] = AuditEvent.objects.order_by("id")[before:]
    assert (event.action, event.subject_id, event.data) == (
        "account.password_set",
        str(user.uuid),
        {},
    )
    assert "Tr0ub4dor" not in str(event.data)
    assert User.objects.get(pk=user.pk).check_password("Tr0ub4dor&3x!")
