"""The key store: the platform's own signing keys.

The local backend keeps Ed25519 private keys in the database, sealed with AES-256-GCM under a
master key: ``MARKETPLACE_KEYSTORE_MASTER_KEY`` (32 bytes, base64), or in development a key
file created on first use in ``MARKETPLACE_DATA_DIR/keys`` (refused in production). A stolen
database dump therefore holds no usable private key.

Public keys are published as a JWK Set (RFC 7517, RFC 8037 for Ed25519) so that anyone can
check a signature offline. The helpers that read a JWK Set and check a signature touch neither
the database nor the settings.
"""

import base64
import binascii
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError, transaction
from django.utils import timezone

from marketplace.jwk import ED25519, PublicKey, b64url
from marketplace.jwk import public_keys_from_jwks as public_keys_from_jwks
from marketplace.models import SigningKey, SigningKeyPurpose, SigningKeyStatus


class KeyStoreError(Exception):
    """A key cannot be used: the master key is wrong or missing, or the key is unknown."""


# --- Master key --------------------------------------------------------------------------------


def _master_key_file() -> Path:
    return Path(settings.DATA_DIR) / "keys" / "master.key"


def master_key() -> bytes:
    configured = settings.KEYSTORE_MASTER_KEY
    if configured:
        try:
            key = base64.b64decode(configured, validate=True)
        except binascii.Error:
            key = b""
        if len(key) != 32:
            raise ImproperlyConfigured(
                "MARKETPLACE_KEYSTORE_MASTER_KEY must be 32 random bytes in base64 "
                "(python -c 'import os,base64;print(base64.b64encode(os.urandom(32)).decode())')."
            )
        return key
    path = _master_key_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: two processes starting at once must not each write a different key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_bytes()
        if len(key) != 32:
            raise KeyStoreError(f"the key-store master key file {path} is damaged") from None
        return key
    key = secrets.token_bytes(32)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key)
    return key


def _seal(kid: str, private_key: bytes) -> bytes:
    nonce = secrets.token_bytes(12)
    return nonce + AESGCM(master_key()).encrypt(nonce, private_key, kid.encode())


def _unseal(kid: str, sealed: bytes) -> bytes:
    try:
        return AESGCM(master_key()).decrypt(sealed[:12], sealed[12:], kid.encode())
    except InvalidTag:
        raise KeyStoreError(
            f"the private key of {kid} cannot be unsealed: the key-store master key is not the "
            "one it was sealed with"
        ) from None


# --- Signing -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Signer:
    kid: str
    algorithm: str
    _private_key: Ed25519PrivateKey

    def sign(self, message: bytes) -> bytes:
        return self._private_key.sign(message)


def _new_kid(purpose: str) -> str:
    return f"{purpose}-{timezone.now():%Y%m%d}-{secrets.token_hex(4)}"


def _audit(actor: Any, action: str, key: SigningKey, data: dict[str, Any]) -> None:
    # Imported here: the audit app builds on this module (it signs with these keys).
    from audit.services import Actor, audit_append

    audit_append(
        actor=actor or Actor.system("keystore"),
        action=action,
        subject=("signing_key", key.kid),
        data={"purpose": key.purpose, "algorithm": key.algorithm, **data},
    )


def _key_create(purpose: str, actor: Any = None) -> SigningKey:
    private_key = Ed25519PrivateKey.generate()
    kid = _new_kid(purpose)
    raw = private_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    key = SigningKey.objects.create(
        kid=kid,
        purpose=purpose,
        algorithm=ED25519,
        backend="local",
        public_key=private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        private_key_sealed=_seal(kid, raw),
    )
    _audit(actor, "signing_key.created", key, {"backend": key.backend})
    return key


def signing_key_active(*, purpose: SigningKeyPurpose) -> SigningKey:
    """The purpose's active key; the local store creates the first one when it is first asked."""
    key = SigningKey.objects.filter(purpose=purpose, status=SigningKeyStatus.ACTIVE).first()
    if key is not None:
        return key
    try:
        with transaction.atomic():
            return _key_create(purpose)
    except IntegrityError:
        # Another process created it first (one active key per purpose is a constraint).
        return SigningKey.objects.get(purpose=purpose, status=SigningKeyStatus.ACTIVE)


def signer_for(key: SigningKey) -> Signer:
    if key.status != SigningKeyStatus.ACTIVE:
        raise KeyStoreError(f"{key.kid} is {key.status} and no longer signs")
    raw = _unseal(key.kid, bytes(key.private_key_sealed))
    return Signer(key.kid, key.algorithm, Ed25519PrivateKey.from_private_bytes(raw))


@transaction.atomic
def signing_key_rotate(
    *, purpose: SigningKeyPurpose, actor: Any = None
) -> tuple[SigningKey, SigningKey | None]:
    """Makes a new active key and retires the previous one, which goes on verifying.

    Returns the new key and the retired one (None when there was none).
    """
    previous = (
        SigningKey.objects.select_for_update()
        .filter(purpose=purpose, status=SigningKeyStatus.ACTIVE)
        .first()
    )
    if previous is not None:
        previous.status = SigningKeyStatus.RETIRED
        previous.retired_at = timezone.now()
        previous.save(update_fields=["status", "retired_at"])
        _audit(actor, "signing_key.retired", previous, {})
    return _key_create(purpose, actor), previous


@transaction.atomic
def signing_key_revoke(*, kid: str, reason: str, actor: Any = None) -> SigningKey:
    """Revokes a key: what it signed no longer verifies. A revoked active key leaves its
    purpose without one until the next signature creates (or a rotation makes) a new key."""
    key = SigningKey.objects.select_for_update().get(kid=kid)
    if key.status != SigningKeyStatus.REVOKED:
        key.status = SigningKeyStatus.REVOKED
        key.revoked_at = timezone.now()
        key.revoked_reason = reason
        key.save(update_fields=["status", "revoked_at", "revoked_reason"])
        _audit(actor, "signing_key.revoked", key, {"reason": reason})
    return key


# --- Public keys, offline ----------------------------------------------------------------------


def jwk_of(key: SigningKey) -> dict[str, Any]:
    public_key = serialization.load_der_public_key(bytes(key.public_key))
    if not isinstance(public_key, Ed25519PublicKey):
        raise KeyStoreError(f"{key.kid} is not an Ed25519 key")
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": b64url(raw),
        "kid": key.kid,
        "alg": key.algorithm,
        "use": "sig",
    }


def jwks_of(keys: "list[SigningKey]") -> dict[str, Any]:
    return {"keys": [jwk_of(key) for key in keys if key.status != SigningKeyStatus.REVOKED]}


def public_keys_from_store(*, purpose: SigningKeyPurpose) -> dict[str, PublicKey]:
    """Every key of the purpose that still verifies (active or retired)."""
    keys: dict[str, PublicKey] = {}
    for key in SigningKey.objects.verifying().filter(purpose=purpose):
        public_key = serialization.load_der_public_key(bytes(key.public_key))
        if isinstance(public_key, Ed25519PublicKey):
            keys[key.kid] = PublicKey(key.kid, key.algorithm, public_key)
    return keys
