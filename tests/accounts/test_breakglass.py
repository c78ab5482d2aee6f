"""Break-glass: `breakglass_grant` files a password login that works only once a second person
approved it, within its window, until revoked; each use is recorded and counted, and a refused
attempt writes nothing (django-axes counts those)."""

import getpass
import io
import socket
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import authenticate
from django.contrib.auth.hashers import get_hasher, identify_hasher
from django.core.management import CommandError, call_command
from django.test import RequestFactory
from django.utils import timezone

from accounts.approval_services import approval_approve
from accounts.breakglass import breakglass_grant_request, breakglass_revoke
from accounts.models import ApprovalRequest, ApprovalStatus, BreakGlassGrant
from audit.models import AuditEvent
from marketplace.actors import Actor
from marketplace.exceptions import InvalidInput
from marketplace.models import User
from marketplace.roles import SECURITY, SUPPORT
from tests.conftest import _staff
from tests.support.audit import sealed_events

pytestmark = pytest.mark.django_db

BACKEND = "accounts.backends.BreakGlassBackend"


@pytest.fixture(autouse=True)
def _backend(settings: Any) -> None:
    # After the password backend, as the settings will list it (the staff's own passwords are
    # not the break-glass one, so it refuses every attempt these tests make).
    settings.AUTHENTICATION_BACKENDS = ["django.contrib.auth.backends.ModelBackend", BACKEND]


@pytest.fixture
def security() -> User:
    return _staff("security@example.com", SECURITY)


@pytest.fixture
def security2() -> User:
    return _staff("security2@example.com", SECURITY)


@pytest.fixture
def on_call() -> User:
    return _staff("on.call@example.com", SUPPORT)


def grant_command(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("breakglass_grant", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def sign_in(password: str, email: str = "on.call@example.com") -> User | None:
    request = RequestFactory().post("/admin/login/", REMOTE_ADDR="203.0.113.7")
    return authenticate(request, username=email, password=password)


def test_a_grant_works_only_once_approved_within_its_window_until_revoked(
    security, security2, on_call
):
    out, err = grant_command(
        "on.call@example.com",
        *("--hours", "2", "--reason", "SSO outage", "--as", security.email, "--for-other"),
    )
    password = out.strip()
    grant = BreakGlassGrant.objects.get()
    assert len(password) >= 32
    assert password not in grant.password_hash
    assert identify_hasher(grant.password_hash).algorithm == get_hasher().algorithm
    assert "nothing changes until 1 other staff member(s)" in err
    assert (grant.user, grant.hours, grant.active_from) == (on_call, 2, None)

    # Filed, not approved: the password does nothing, and records nothing.
    events = AuditEvent.objects.count()
    assert sign_in(password) is None
    assert AuditEvent.objects.count() == events

    approval_approve(grant.approval.pk, by=security2)
    grant.refresh_from_db()
    assert grant.active_until - grant.active_from == timedelta(hours=2)
    assert grant.approval.status == ApprovalStatus.APPLIED

    assert sign_in("not the password") is None
    assert sign_in(password) == on_call
    grant.refresh_from_db()
    assert (grant.uses, grant.last_used_at is not None) == (1, True)
    [used] = sealed_events(action="breakglass.used")
    assert (used.actor_type, used.actor_id) == ("staff", str(on_call.uuid))
    assert used.data == {
        "grant": grant.pk,
        "user": str(on_call.uuid),
        "client_ip": "203.0.113.7",
        "uses": 1,
    }
    [granted] = sealed_events(action="breakglass.granted")
    assert granted.actor_id == str(security2.uuid)

    # After the window: refused.
    BreakGlassGrant.objects.filter(pk=grant.pk).update(
        active_from=timezone.now() - timedelta(hours=3),
        active_until=timezone.now() - timedelta(hours=1),
    )
    assert sign_in(password) is None

    # Within the window again, then revoked: refused at once.
    BreakGlassGrant.objects.filter(pk=grant.pk).update(
        active_until=timezone.now() + timedelta(hours=1)
    )
    assert sign_in(password) == on_call
    assert breakglass_revoke(grant_pk=grant.pk, actor=Actor.of_user(security)) is True
    assert breakglass_revoke(grant_pk=grant.pk, actor=Actor.of_user(security)) is False
    assert sign_in(password) is None
    assert sealed_events(action="breakglass.used").count() == 2
    assert sealed_events(action="breakglass.revoked").count() == 1


def test_a_session_opened_with_a_grant_ends_with_it(client, security, security2, on_call):
    grant, request, password = breakglass_grant_request(
        email=on_call.email, hours=1, reason="SSO outage", requested_by=security
    )
    approval_approve(request.pk, by=security2)
    assert client.login(username=on_call.email, password=password)
    assert client.get("/admin/").status_code == 200

    breakglass_revoke(grant_pk=grant.pk, actor=Actor.of_user(security))

    assert client.get("/admin/").status_code == 302  # to the sign-in page


def test_a_grant_revoked_before_approval_fails_to_apply(security, security2, on_call):
    grant, request, password = breakglass_grant_request(
        email=on_call.email, hours=1, reason="SSO outage", requested_by=security
    )
    breakglass_revoke(grant_pk=grant.pk, actor=Actor.of_user(security))

    approval_approve(request.pk, by=security2)

    request.refresh_from_db()
    assert request.status == ApprovalStatus.FAILED
    assert "revoked before it was approved" in request.error
    assert sign_in(password) is None


def test_the_admin_lists_grants_and_revokes_them(client, security, security2, on_call):
    grant, request, _ = breakglass_grant_request(
        email=on_call.email, hours=1, reason="SSO outage", requested_by=security
    )
    approval_approve(request.pk, by=security2)
    client.force_login(security2)

    page = client.get("/admin/accounts/breakglassgrant/")
    assert page.status_code == 200
    assert on_call.email in page.content.decode()
    response = client.post(
        "/admin/accounts/breakglassgrant/",
        {"action": "revoke", "_selected_action": [grant.pk]},
        follow=True,
    )

    grant.refresh_from_db()
    assert grant.revoked_at is not None
    assert "1 grant(s) revoked." in response.content.decode()
    event = sealed_events(action="breakglass.revoked").get()
    assert event.actor_id == str(security2.uuid)
    assert client.get(f"/admin/accounts/breakglassgrant/{grant.pk}/delete/").status_code == 403


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["on.call@example.com", "--hours", "5"], "lasts 1 to 4 hour"),
        (["on.call@example.com", "--hours", "0"], "lasts 1 to 4 hour"),
        (["buyer@example.com", "--hours", "1"], "is not an active staff account"),
        (["nobody@example.com", "--hours", "1"], "There is no account"),
    ],
)
def test_a_refused_grant_files_nothing(security, on_call, args, message):
    User.objects.create_user(email="buyer@example.com")
    events = AuditEvent.objects.count()

    with pytest.raises(CommandError, match=message):
        grant_command(*args, "--reason", "x", "--as", security.email, "--for-other")

    assert not BreakGlassGrant.objects.exists()
    assert not ApprovalRequest.objects.exists()
    assert AuditEvent.objects.count() == events


def test_the_longest_window_is_the_setting(settings, security, on_call):
    settings.BREAKGLASS_MAX_HOURS = 8

    grant, _, _ = breakglass_grant_request(
        email=on_call.email, hours=8, reason="x", requested_by=security
    )

    assert grant.hours == 8
    with pytest.raises(InvalidInput, match="1 to 8"):
        breakglass_grant_request(email=on_call.email, hours=9, reason="x", requested_by=security)


def test_only_security_files_a_grant(on_call):
    with pytest.raises(CommandError, match=r"may not file a breakglass\.grant request"):
        grant_command(on_call.email, "--hours", "1", "--reason", "x", "--as", on_call.email)
    assert not BreakGlassGrant.objects.exists()


def test_the_command_files_a_grant_only_for_the_requesters_own_account_unless_told(
    security, on_call
):
    with pytest.raises(CommandError, match="only for their own account"):
        grant_command(on_call.email, "--hours", "1", "--reason", "x", "--as", security.email)
    assert not BreakGlassGrant.objects.exists()
    assert not ApprovalRequest.objects.exists()

    _, err = grant_command(
        on_call.email, "--hours", "1", "--reason", "x", "--as", security.email, "--for-other"
    )

    assert "Warning: this password is for on.call@example.com, not you" in err
    assert "out of band" in err
    assert BreakGlassGrant.objects.get().user == on_call


def test_a_grant_filed_and_approved_through_the_commands_records_who_ran_them(security, security2):
    origin = {"via": "command", "os_user": getpass.getuser(), "host": socket.gethostname()}

    grant_command(security.email, "--hours", "1", "--reason", "SSO outage", "--as", security.email)
    request = ApprovalRequest.objects.get()
    call_command(
        "approvals", "approve", str(request.pk), "--as", security2.email, stderr=io.StringIO()
    )

    [requested] = sealed_events(action="approval.requested")
    [approved] = sealed_events(action="approval.approved")
    assert (requested.actor_id, approved.actor_id) == (str(security.uuid), str(security2.uuid))
    assert {key: requested.data[key] for key in origin} == origin
    assert {key: approved.data[key] for key in origin} == origin
    assert ApprovalRequest.objects.get().status == ApprovalStatus.APPLIED


def test_a_sign_in_with_a_grant_stamps_the_grant_on_the_session(
    client, security, security2, on_call
):
    grant, request, password = breakglass_grant_request(
        email=on_call.email, hours=1, reason="SSO outage", requested_by=security
    )
    approval_approve(request.pk, by=security2)

    response = client.post(
        "/admin/login/?next=/admin/", {"username": on_call.email, "password": password}
    )

    assert response.status_code == 302, response.content
    assert client.session["breakglass_grant"] == grant.pk
    assert sealed_events(action="breakglass.used").get().data["grant"] == grant.pk
