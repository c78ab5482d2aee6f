"""`rotate_signer` and `revoke_signer` file two-person approval requests (`--as EMAIL`,
`--reason`), print the request's id and what happens next; the key changes only once another
Security member approves. A mistyped kid, a missing reason or a requester without the role
changes nothing."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from accounts.models import ApprovalRequest, ApprovalStatus
from audit.models import AuditEvent
from audit.signing_keys import signing_key_active
from marketplace.models import SigningKey, SigningKeyPurpose, SigningKeyStatus, User
from marketplace.roles import SECURITY, SUPPORT
from tests.conftest import _staff
from tests.support.approvals import approved, second_person

pytestmark = pytest.mark.django_db


@pytest.fixture
def security() -> User:
    return _staff("security@example.com", SECURITY)


def run(command: str, *args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command(command, *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_revoke_signer_files_a_request_that_revokes_the_key_once_approved(security):
    key = signing_key_active(purpose=SigningKeyPurpose.LICENSE)

    out, err = run(
        "revoke_signer", key.kid, "--reason", "  leaked in a log  ", "--as", security.email
    )

    request = ApprovalRequest.objects.get()
    assert out == f"{request.pk}\n"
    assert f"Revoke the license signing key {key.kid}" in err
    assert "nothing changes until 1 other staff member(s) in the role Security" in err
    assert SigningKey.objects.get(pk=key.pk).status == SigningKeyStatus.ACTIVE

    approver = second_person()
    approved(request.pk, by=approver)

    key.refresh_from_db()
    assert (key.status, key.revoked_reason) == (SigningKeyStatus.REVOKED, "leaked in a log")
    event = AuditEvent.objects.get(action="signing_key.revoked")
    assert (event.actor_type, event.actor_id) == ("staff", str(approver.uuid))
    assert (event.subject_id, event.data["reason"]) == (key.kid, "leaked in a log")

    with pytest.raises(CommandError, match="is revoked already"):
        run("revoke_signer", key.kid, "--reason", "twice", "--as", security.email)
    assert AuditEvent.objects.filter(action="signing_key.revoked").count() == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["no-such-kid", "--reason", "x"], "No signing key has the kid 'no-such-kid'."),
        (["KID", "--reason", "   "], "--reason must say why the key is revoked."),
        (["KID", "--reason", "x" * 501], "The reason takes at most 500 characters."),
    ],
)
def test_a_refused_revocation_changes_nothing(security, args, message):
    key = signing_key_active(purpose=SigningKeyPurpose.LICENSE)
    events = AuditEvent.objects.count()
    args = [key.kid if arg == "KID" else arg for arg in args]

    with pytest.raises(CommandError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run("revoke_signer", *args, "--as", security.email)

    assert SigningKey.objects.get(pk=key.pk).status == SigningKeyStatus.ACTIVE
    assert not ApprovalRequest.objects.exists()
    assert AuditEvent.objects.count() == events


def test_rotate_signer_files_a_request_that_rotates_once_approved(security):
    old = signing_key_active(purpose=SigningKeyPurpose.AUDIT)

    out, err = run(
        "rotate_signer", "--purpose", "audit", "--as", security.email, "--reason", "yearly"
    )

    request = ApprovalRequest.objects.get()
    assert out == f"{request.pk}\n"
    assert f"Rotate the audit signing key: a new active key is made and {old.kid}" in err
    assert signing_key_active(purpose=SigningKeyPurpose.AUDIT) == old

    approved(request.pk)

    new = signing_key_active(purpose=SigningKeyPurpose.AUDIT)
    assert new != old
    request.refresh_from_db()
    assert (request.status, request.outcome) == (
        ApprovalStatus.APPLIED,
        {"new": new.kid, "retired": old.kid},
    )


def test_only_security_asks_for_a_rotation(security):
    support = _staff("support@example.com", SUPPORT)

    for who, message in (
        (support.email, "may not file a signing_key.rotate request"),
        ("nobody@example.com", "is not an active staff account"),
    ):
        with pytest.raises(CommandError, match=message):
            run("rotate_signer", "--as", who, "--reason", "x")

    assert not ApprovalRequest.objects.exists()
