"""The key store's backends: KMS (against moto's KMS in server mode), the signing proxy
(against the stand-in in tests/support/signing_proxy.py) and the local store, each making,
signing, rotating and revoking keys through the same functions; signatures are checked with
`cryptography` and with an independent JOSE library (joserfc)."""

import json
from typing import Any

import boto3
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc import jws
from joserfc.errors import BadSignatureError
from joserfc.jwk import KeySet

from audit.models import AuditEvent
from audit.signing_keys import signing_key_active, signing_key_revoke, signing_key_rotate
from marketplace.jwk import b64url, es256_signature_to_der
from marketplace.keystore import (
    KeyStoreError,
    KeyStoreUnavailable,
    Signer,
    jwk_of,
    jwks_of,
    public_keys_from_store,
    signer_for,
)
from marketplace.models import SigningKey, SigningKeyPurpose, SigningKeyStatus
from tests.marketplace.test_settings import PRODUCTION, manage
from tests.support.approvals import rotated
from tests.support.moto import CREDENTIALS, REGION
from tests.support.net import free_port
from tests.support.signing_proxy import SigningProxy

# A token as random as production asks for (config/guard.py).
SIGNING_TOKEN = "Qm2x9Zt4LkVw7RbN3cYp8HdF1sJg6TaE5uXo0WiKqCr"

pytestmark = [
    pytest.mark.django_db,
    # RFC 9864 names Ed25519 "Ed25519"; the platform publishes the long-standing "EdDSA".
    pytest.mark.filterwarnings("ignore:EdDSA is deprecated"),
]

LICENSE = SigningKeyPurpose.LICENSE


def compact_jws(signer: Signer, claims: dict[str, Any]) -> str:
    header = {"alg": signer.algorithm, "kid": signer.kid, "typ": "JWT"}
    signing_input = ".".join(
        b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
    )
    return f"{signing_input}.{b64url(signer.sign(signing_input.encode()))}"


def joserfc_claims(token: str, keys: list[SigningKey]) -> dict[str, Any]:
    """Verifies with joserfc against the published JWKs of `keys`; raises when it fails."""
    key_set = KeySet.import_key_set(jwks_of(keys))
    return json.loads(
        jws.deserialize_compact(token, key_set, algorithms=["EdDSA", "ES256"]).payload
    )


def events_of(key: SigningKey) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (event.action, event.actor_id, event.data)
        for event in AuditEvent.objects.filter(
            subject_type="signing_key", subject_id=key.kid
        ).order_by("id")
    ]


@pytest.fixture
def kms(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, settings: Any) -> Any:
    """License keys in moto's KMS; returns a boto3 client of that KMS."""
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    settings.KEYSTORE_BACKEND = "kms"
    settings.KMS_ENDPOINT_URL = moto_endpoint
    settings.KMS_REGION = REGION
    settings.LICENSE_SIGNER_KEY_ID = ""
    settings.KEYSTORE_TIMEOUT_SECONDS = 2.0
    return boto3.client("kms", endpoint_url=moto_endpoint, region_name=REGION)


# --- KMS ---------------------------------------------------------------------------------------


def test_kms_makes_a_p256_key_and_signs_es256_that_cryptography_and_joserfc_verify(kms) -> None:
    key = signing_key_active(purpose=LICENSE)

    assert (key.backend, key.algorithm, key.status) == ("kms", "ES256", "active")
    assert bytes(key.private_key_sealed) == b""
    metadata = kms.describe_key(KeyId=key.backend_key_id)["KeyMetadata"]
    assert metadata["Arn"] == key.backend_key_id
    assert (metadata["KeySpec"], metadata["KeyUsage"]) == ("ECC_NIST_P256", "SIGN_VERIFY")
    assert key.kid in metadata["Description"]

    signer = signer_for(key)
    signature = signer.sign(b"license payload")
    assert len(signature) == 64  # JOSE r || s, not DER
    # With cryptography, against the public key KMS itself gives out.
    kms_public = serialization.load_der_public_key(
        kms.get_public_key(KeyId=key.backend_key_id)["PublicKey"]
    )
    assert isinstance(kms_public, ec.EllipticCurvePublicKey)
    kms_public.verify(
        es256_signature_to_der(signature), b"license payload", ec.ECDSA(hashes.SHA256())
    )
    # KMS agrees too.
    assert kms.verify(
        KeyId=key.backend_key_id,
        Message=b"license payload",
        Signature=es256_signature_to_der(signature),
        SigningAlgorithm="ECDSA_SHA_256",
    )["SignatureValid"]
    # An independent JOSE library, from the published JWK alone.
    token = compact_jws(signer, {"sub": "order-1"})
    assert joserfc_claims(token, [key]) == {"sub": "order-1"}
    jwk = jwk_of(key)
    assert (jwk["kty"], jwk["crv"], jwk["alg"], jwk["use"], jwk["kid"]) == (
        "EC",
        "P-256",
        "ES256",
        "sig",
        key.kid,
    )
    assert "d" not in jwk
    assert events_of(key) == [
        (
            "signing_key.created",
            "keystore",
            {
                "purpose": "license",
                "algorithm": "ES256",
                "backend": "kms",
                "backend_key_id": key.backend_key_id,
                "adopted": False,
            },
        )
    ]


def test_the_configured_kms_key_is_adopted_once_and_never_made_active_again(kms, settings) -> None:
    created = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    settings.LICENSE_SIGNER_KEY_ID = created["KeyId"]  # the bare id: recorded as its ARN

    adopted = signing_key_active(purpose=LICENSE)

    assert adopted.backend_key_id == created["Arn"]
    assert signing_key_active(purpose=LICENSE) == adopted
    assert events_of(adopted)[0][2]["adopted"] is True
    assert joserfc_claims(compact_jws(signer_for(adopted), {"n": 1}), [adopted]) == {"n": 1}

    # Rotation makes a new KMS key even though the setting still names the adopted one.
    new, retired = signing_key_rotate(purpose=LICENSE)
    assert retired == adopted
    assert new.backend_key_id not in ("", created["Arn"])
    # With no active key, the configured key, now retired, is not brought back.
    signing_key_revoke(kid=new.kid, reason="compromised")
    again = signing_key_active(purpose=LICENSE)
    assert again.backend_key_id not in (created["Arn"], new.backend_key_id)
    assert SigningKey.objects.filter(backend_key_id=created["Arn"]).count() == 1
    # Operators disable the retired key in KMS: making the next key does not need it.
    kms.disable_key(KeyId=created["KeyId"])
    signing_key_revoke(kid=again.kid, reason="test")
    assert signing_key_active(purpose=LICENSE).backend_key_id != created["Arn"]


@pytest.mark.parametrize(
    ("spec", "disabled", "message"),
    [
        ("RSA_2048", False, "must be ECC_NIST_P256 keys for SIGN_VERIFY"),
        ("ECC_NIST_P384", False, "must be ECC_NIST_P256 keys for SIGN_VERIFY"),
        ("ECC_NIST_P256", True, "is Disabled, not Enabled"),
    ],
)
def test_a_configured_kms_key_that_cannot_sign_es256_is_refused(
    kms, settings, spec, disabled, message
) -> None:
    metadata = kms.create_key(KeySpec=spec, KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    if disabled:
        kms.disable_key(KeyId=metadata["KeyId"])
    settings.LICENSE_SIGNER_KEY_ID = metadata["Arn"]

    with pytest.raises(KeyStoreError, match=message):
        signing_key_active(purpose=LICENSE)
    assert not SigningKey.objects.exists()


def test_kms_rotation_retires_the_old_key_which_still_verifies_and_the_new_one_signs(
    kms,
) -> None:
    old = signing_key_active(purpose=LICENSE)
    token = compact_jws(signer_for(old), {"license": "before"})

    new, retired = signing_key_rotate(purpose=LICENSE)

    assert retired == old
    old.refresh_from_db()
    assert old.status == SigningKeyStatus.RETIRED
    assert (new.backend, new.algorithm) == ("kms", "ES256")
    assert new.backend_key_id != old.backend_key_id
    with pytest.raises(KeyStoreError, match="no longer signs"):
        signer_for(old)
    assert joserfc_claims(token, [old, new]) == {"license": "before"}
    fresh = compact_jws(signer_for(signing_key_active(purpose=LICENSE)), {"license": "after"})
    assert joserfc_claims(fresh, [old, new]) == {"license": "after"}
    assert set(public_keys_from_store(purpose=LICENSE)) == {old.kid, new.kid}


def test_a_revoked_kms_key_leaves_the_jwks_and_what_it_signed_no_longer_verifies(kms) -> None:
    key = signing_key_active(purpose=LICENSE)
    message = b"signed before the revocation"
    signature = signer_for(key).sign(message)
    assert public_keys_from_store(purpose=LICENSE)[key.kid].verifies(signature, message)

    signing_key_revoke(kid=key.kid, reason="leaked")

    key.refresh_from_db()
    assert key.status == SigningKeyStatus.REVOKED
    assert public_keys_from_store(purpose=LICENSE) == {}
    assert jwks_of(list(SigningKey.objects.all())) == {"keys": []}
    with pytest.raises(KeyStoreError, match="revoked and no longer signs"):
        signer_for(key)


def test_an_unreachable_kms_is_a_retryable_error_and_nothing_is_recorded(kms, settings) -> None:
    settings.KMS_ENDPOINT_URL = f"http://127.0.0.1:{free_port()}"
    settings.KEYSTORE_TIMEOUT_SECONDS = 0.5

    with pytest.raises(KeyStoreUnavailable, match=r"KMS at http://127\.0\.0\.1:\d+ is unreachable"):
        signing_key_active(purpose=LICENSE)
    assert not SigningKey.objects.exists()
    assert not AuditEvent.objects.filter(subject_type="signing_key").exists()
    # A rotation approved while KMS is out fails, keeping the error; nothing is recorded.
    request = rotated("license")
    assert request.status == "failed"
    assert "is unreachable" in request.error
    assert not SigningKey.objects.exists()
    assert not AuditEvent.objects.filter(subject_type="signing_key").exists()


def test_signing_while_kms_is_unreachable_fails_as_unavailable(kms, settings) -> None:
    key = signing_key_active(purpose=LICENSE)
    settings.KMS_ENDPOINT_URL = f"http://127.0.0.1:{free_port()}"
    settings.KEYSTORE_TIMEOUT_SECONDS = 0.5

    with pytest.raises(KeyStoreUnavailable, match="unreachable"):
        signer_for(key).sign(b"message")


def test_kms_refusing_a_request_is_a_terminal_error(kms) -> None:
    key = signing_key_active(purpose=LICENSE)
    key.backend_key_id = (
        f"arn:aws:kms:{REGION}:123456789012:key/{'0' * 8}-0000-0000-0000-{'0' * 12}"
    )

    with pytest.raises(KeyStoreError, match="refused Sign") as raised:
        signer_for(key).sign(b"message")
    assert not isinstance(raised.value, KeyStoreUnavailable)


def test_rotate_signer_makes_the_new_license_key_in_kms(kms) -> None:
    old = signing_key_active(purpose=LICENSE)

    request = rotated("license")

    new = signing_key_active(purpose=LICENSE)
    assert request.outcome == {"new": new.kid, "retired": old.kid}
    assert (new.backend, new.algorithm) == ("kms", "ES256")
    assert [action for action, _, _ in events_of(old)] == [
        "signing_key.created",
        "signing_key.retired",
    ]
    approver = str(request.decisions.get().by.uuid)
    assert events_of(old)[1][1] == approver
    assert events_of(new)[0][:2] == ("signing_key.created", approver)


def test_audit_keys_stay_local_whatever_the_license_backend(kms) -> None:
    audit = signing_key_active(purpose=SigningKeyPurpose.AUDIT)
    new, _ = signing_key_rotate(purpose=SigningKeyPurpose.AUDIT)

    assert {(k.backend, k.algorithm) for k in (audit, new)} == {("local", "EdDSA")}


# --- Signing proxy -----------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["ES256", "EdDSA"])
def test_the_proxy_makes_keys_and_signs_with_them(signing_proxy: SigningProxy, algorithm) -> None:
    signing_proxy.algorithm = algorithm

    key = signing_key_active(purpose=LICENSE)
    token = compact_jws(signer_for(key), {"sub": "order-2"})

    assert (key.backend, key.algorithm) == ("proxy", algorithm)
    assert signing_proxy.keys == {key.backend_key_id: algorithm}
    assert joserfc_claims(token, [key]) == {"sub": "order-2"}
    create, sign = signing_proxy.requests
    assert (create.method, create.path, create.status) == ("POST", "/v1/keys", 201)
    assert create.body == {"kid": key.kid, "purpose": "license"}
    assert create.headers["authorization"] == f"Bearer {signing_proxy.token}"
    assert (sign.path, sign.status) == (f"/v1/keys/{key.backend_key_id}/sign", 200)
    assert sign.body["message"] == b64url(token.rsplit(".", 1)[0].encode())


def test_a_token_the_proxy_refuses_is_a_terminal_error_and_nothing_is_recorded(
    signing_proxy: SigningProxy, settings
) -> None:
    settings.SIGNING_TOKEN = "not-the-token"

    with pytest.raises(KeyStoreError, match=r"refused making a key \(401\).*SIGNING_TOKEN") as err:
        signing_key_active(purpose=LICENSE)
    assert not isinstance(err.value, KeyStoreUnavailable)
    assert not SigningKey.objects.exists()
    assert signing_proxy.keys == {}


def test_a_proxy_outage_is_retryable_and_signing_resumes_after_it(
    signing_proxy: SigningProxy,
) -> None:
    key = signing_key_active(purpose=LICENSE)
    signer = signer_for(key)
    signing_proxy.down = True

    with pytest.raises(KeyStoreUnavailable, match=r"failed signing with .* \(503\)"):
        signer.sign(b"message")
    with pytest.raises(KeyStoreUnavailable, match=r"failed making a key \(503\)"):
        signing_key_rotate(purpose=LICENSE)
    assert list(SigningKey.objects.values_list("kid", "status")) == [(key.kid, "active")]

    signing_proxy.down = False
    assert public_keys_from_store(purpose=LICENSE)[key.kid].verifies(
        signer.sign(b"message"), b"message"
    )


def test_a_slow_or_absent_proxy_is_unavailable(signing_proxy: SigningProxy, settings) -> None:
    key = signing_key_active(purpose=LICENSE)
    settings.KEYSTORE_TIMEOUT_SECONDS = 0.2
    signing_proxy.delay = 2.0
    with pytest.raises(KeyStoreUnavailable, match=r"unreachable.*timed out"):
        signer_for(key).sign(b"message")

    settings.SIGNING_ENDPOINT = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(KeyStoreUnavailable, match="unreachable"):
        signer_for(key).sign(b"message")


def test_a_signature_that_does_not_match_the_published_key_is_refused(
    signing_proxy: SigningProxy,
) -> None:
    key = signing_key_active(purpose=LICENSE)
    signing_proxy.wrong_signatures = True

    with pytest.raises(KeyStoreError, match="public key does not verify"):
        signer_for(key).sign(b"message")


def test_a_key_the_proxy_does_not_know_is_a_terminal_error(signing_proxy: SigningProxy) -> None:
    key = signing_key_active(purpose=LICENSE)
    key.backend_key_id = "kr_unknown"

    with pytest.raises(KeyStoreError, match=r"refused signing with .* \(404\)") as err:
        signer_for(key).sign(b"message")
    assert not isinstance(err.value, KeyStoreUnavailable)


def test_proxy_rotation_and_revocation(signing_proxy: SigningProxy) -> None:
    old = signing_key_active(purpose=LICENSE)
    signature = signer_for(old).sign(b"before")

    new, retired = signing_key_rotate(purpose=LICENSE)

    assert retired == old
    assert new.backend == "proxy"
    assert len(signing_proxy.keys) == 2
    assert public_keys_from_store(purpose=LICENSE)[old.kid].verifies(signature, b"before")
    signing_key_revoke(kid=old.kid, reason="retired and leaked")
    assert set(public_keys_from_store(purpose=LICENSE)) == {new.kid}


# --- Local -------------------------------------------------------------------------------------


def test_the_local_backend_signs_licenses_with_ed25519(settings) -> None:
    settings.KEYSTORE_BACKEND = "local"

    key = signing_key_active(purpose=LICENSE)
    token = compact_jws(signer_for(key), {"sub": "order-3"})

    assert (key.backend, key.algorithm, key.backend_key_id) == ("local", "EdDSA", "")
    assert joserfc_claims(token, [key]) == {"sub": "order-3"}
    tampered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    with pytest.raises(BadSignatureError):
        joserfc_claims(tampered, [key])


# --- Settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            {"MARKETPLACE_LICENSE_SIGNER_KEY_ID": ""},
            "MARKETPLACE_LICENSE_SIGNER_KEY_ID: not set (the local key store is refused",
        ),
        (
            {"MARKETPLACE_KEYSTORE_BACKEND": "local"},
            "MARKETPLACE_KEYSTORE_BACKEND: local is refused",
        ),
        (
            {"MARKETPLACE_KMS_ENDPOINT_URL": "http://kms.internal"},
            "MARKETPLACE_KMS_ENDPOINT_URL: must be an https:// URL",
        ),
        (
            {
                "MARKETPLACE_LICENSE_SIGNER_KEY_ID": "",
                "MARKETPLACE_SIGNING_ENDPOINT": "https://signer.internal",
            },
            "MARKETPLACE_SIGNING_TOKEN: not set",
        ),
        (
            {
                "MARKETPLACE_KEYSTORE_BACKEND": "proxy",
                "MARKETPLACE_SIGNING_ENDPOINT": "http://signer.internal",
                "MARKETPLACE_SIGNING_TOKEN": SIGNING_TOKEN,
            },
            "MARKETPLACE_SIGNING_ENDPOINT: must be an https:// URL",
        ),
    ],
)
def test_production_refuses_an_unsafe_key_store(override, message) -> None:
    environment = {
        **PRODUCTION,
        "MARKETPLACE_LICENSE_SIGNER_KEY_ID": "arn:aws:kms:us-east-1:111122223333:key/license",
        **override,
    }
    result = manage("check", **{k: v for k, v in environment.items() if v})

    assert result.returncode != 0
    assert message in result.stderr
    assert result.stderr.count("\n  - ") == 1


@pytest.mark.parametrize(
    ("environment", "message"),
    [
        ({"MARKETPLACE_KEYSTORE_BACKEND": "hsm"}, "must be local, kms or proxy, not 'hsm'"),
        ({"MARKETPLACE_KEYSTORE_BACKEND": "proxy"}, "proxy needs MARKETPLACE_SIGNING_ENDPOINT"),
    ],
)
def test_an_unusable_backend_setting_is_refused_everywhere(environment, message) -> None:
    result = manage("check", **environment)

    assert result.returncode != 0
    assert message in result.stderr


def test_production_accepts_a_kms_or_proxy_key_store() -> None:
    kms = manage(
        "check",
        **{**PRODUCTION, "MARKETPLACE_LICENSE_SIGNER_KEY_ID": "alias/marketplace-license"},
    )
    proxy = manage(
        "check",
        **{
            **PRODUCTION,
            "MARKETPLACE_SIGNING_ENDPOINT": "https://signer.internal",
            "MARKETPLACE_SIGNING_TOKEN": SIGNING_TOKEN,
        },
    )

    assert (kms.returncode, proxy.returncode) == (0, 0), kms.stderr + proxy.stderr
