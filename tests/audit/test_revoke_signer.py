"""`revoke_signer KID --reason TEXT`: the key stops verifying and leaves the JWK Set, recorded
with its reason; a mistyped kid or a missing reason changes nothing."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from audit.models import AuditEvent
from audit.signing_keys import signing_key_active
from marketplace.models import SigningKey, SigningKeyPurpose, SigningKeyStatus

pytestmark = pytest.mark.django_db


def revoke(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("revoke_signer", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_a_key_is_revoked_with_its_reason_and_recorded_once():
    key = signing_key_active(purpose=SigningKeyPurpose.LICENSE)

    out, err = revoke(key.kid, "--reason", "  leaked in a log  ")

    assert out == f"{key.kid}\n"
    assert "was revoked" in err
    key.refresh_from_db()
    assert (key.status, key.revoked_reason) == (SigningKeyStatus.REVOKED, "leaked in a log")
    event = AuditEvent.objects.get(action="signing_key.revoked")
    assert (event.actor_type, event.actor_id) == ("system", "revoke_signer")
    assert (event.subject_id, event.data["reason"]) == (key.kid, "leaked in a log")

    _, again = revoke(key.kid, "--reason", "twice")
    assert "was already revoked" in again
    assert AuditEvent.objects.filter(action="signing_key.revoked").count() == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["no-such-kid", "--reason", "x"], "No signing key has the kid 'no-such-kid'."),
        (["KID", "--reason", "   "], "--reason must say why the key is revoked."),
        (["KID", "--reason", "x" * 501], "--reason takes at most 500 characters."),
    ],
)
def test_a_refused_revocation_changes_nothing(args, message):
    key = signing_key_active(purpose=SigningKeyPurpose.LICENSE)
    events = AuditEvent.objects.count()
    args = [key.kid if arg == "KID" else arg for arg in args]

    with pytest.raises(CommandError, match=message.replace("(", r"\(").replace(")", r"\)")):
        revoke(*args)

    assert SigningKey.objects.get(pk=key.pk).status == SigningKeyStatus.ACTIVE
    assert AuditEvent.objects.count() == events
