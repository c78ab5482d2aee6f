import base64
import os
import stat

import pytest
from joserfc.jwk import KeySet

from audit.models import AuditEvent
from audit.signing_keys import signing_key_active, signing_key_revoke, signing_key_rotate
from marketplace.jwk import public_keys_from_jwks
from marketplace.keystore import KeyStoreError, jwk_of, signer_for
from marketplace.models import SigningKeyPurpose, SigningKeyStatus
from tests.support.approvals import rotated

pytestmark = pytest.mark.django_db


def test_the_first_use_creates_one_active_key_whose_private_half_is_sealed(settings) -> None:
    key = signing_key_active(purpose=SigningKeyPurpose.AUDIT)
    assert signing_key_active(purpose=SigningKeyPurpose.AUDIT) == key
    assert key.kid.startswith("audit-")
    assert (key.algorithm, key.status) == ("EdDSA", SigningKeyStatus.ACTIVE)
    sealed = bytes(key.private_key_sealed)
    assert len(sealed) == 12 + 32 + 16  # nonce, Ed25519 seed, GCM tag
    master = settings.DATA_DIR / "keys" / "master.key"
    assert stat.S_IMODE(master.stat().st_mode) == 0o600

    signature = signer_for(key).sign(b"message")
    [public] = public_keys_from_jwks({"keys": [jwk_of(key)]}).values()
    assert public.verifies(signature, b"message")
    assert not public.verifies(signature, b"messagE")


def test_a_private_key_sealed_under_another_master_key_cannot_be_used(settings) -> None:
    settings.KEYSTORE_MASTER_KEY = base64.b64encode(os.urandom(32)).decode()
    key = signing_key_active(purpose=SigningKeyPurpose.LICENSE)
    settings.KEYSTORE_MASTER_KEY = base64.b64encode(os.urandom(32)).decode()
    with pytest.raises(KeyStoreError, match="not the one it was sealed with"):
        signer_for(key)


def test_rotation_retires_the_old_key_which_still_verifies_but_no_longer_signs() -> None:
    old = signing_key_active(purpose=SigningKeyPurpose.AUDIT)
    new, retired = signing_key_rotate(purpose=SigningKeyPurpose.AUDIT)
    assert retired is not None
    assert retired.pk == old.pk
    old.refresh_from_db()
    assert old.status == SigningKeyStatus.RETIRED
    assert old.retired_at is not None
    assert signing_key_active(purpose=SigningKeyPurpose.AUDIT) == new
    with pytest.raises(KeyStoreError, match="no longer signs"):
        signer_for(old)


def test_the_jwks_lists_active_and_retired_keys_but_not_revoked_ones(api_client) -> None:
    audit = signing_key_active(purpose=SigningKeyPurpose.AUDIT)
    _, retired = signing_key_rotate(purpose=SigningKeyPurpose.AUDIT)
    license_key = signing_key_active(purpose=SigningKeyPurpose.LICENSE)
    signing_key_revoke(kid=license_key.kid, reason="test")

    response = api_client.get("/.well-known/jwks.json")

    assert response.status_code == 200
    assert response["Cache-Control"] == "public, max-age=300"
    document = response.json()
    kids = {jwk["kid"] for jwk in document["keys"]}
    active = signing_key_active(purpose=SigningKeyPurpose.AUDIT)
    assert kids == {audit.kid, active.kid}
    assert retired is not None
    assert retired.kid == audit.kid
    for jwk in document["keys"]:
        assert (jwk["kty"], jwk["crv"], jwk["alg"], jwk["use"]) == (
            "OKP",
            "Ed25519",
            "EdDSA",
            "sig",
        )
    # An independent JOSE library reads it.
    key_set = KeySet.import_key_set(document)
    assert {key.kid for key in key_set.keys} == kids


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "a JWK Set is a JSON object"),
        ({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "AA"}]}, "has no kid"),
        (
            {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "AA", "kid": "k"}]},
            "unreadable public key",
        ),
    ],
)
def test_an_unusable_jwks_is_refused_with_a_reason(document, message) -> None:
    with pytest.raises(ValueError, match=message):
        public_keys_from_jwks(document)


def test_rotate_signer_rotates_once_approved_and_audits_the_rotation() -> None:
    old = signing_key_active(purpose=SigningKeyPurpose.AUDIT)

    request = rotated("audit")

    new = signing_key_active(purpose=SigningKeyPurpose.AUDIT)
    assert request.outcome == {"new": new.kid, "retired": old.kid}
    approver = request.decisions.get().by
    events = AuditEvent.objects.filter(subject_type="signing_key").order_by("id")
    assert [(e.action, e.subject_id, e.actor_type, e.actor_id) for e in events] == [
        ("signing_key.created", old.kid, "system", "keystore"),
        ("signing_key.retired", old.kid, "staff", str(approver.uuid)),
        ("signing_key.created", new.kid, "staff", str(approver.uuid)),
    ]
