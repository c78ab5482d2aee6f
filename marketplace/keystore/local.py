"""The local backend: Ed25519 keys sealed in the database under the key-store master key."""

import base64
import binascii
import os
import secrets
from collections.abc import Callable
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from marketplace.jwk import ED25519
from marketplace.keystore.base import NewKey
from marketplace.keystore.errors import KeyStoreError
from marketplace.models import SigningKey, SigningKeyBackend


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


class LocalBackend:
    name = SigningKeyBackend.LOCAL

    def create(self, *, kid: str, purpose: str) -> NewKey:
        private_key = Ed25519PrivateKey.generate()
        raw = private_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        return NewKey(
            algorithm=ED25519,
            public_key=private_key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            private_key_sealed=_seal(kid, raw),
        )

    def signing_function(self, key: SigningKey) -> Callable[[bytes], bytes]:
        raw = _unseal(key.kid, bytes(key.private_key_sealed))
        return Ed25519PrivateKey.from_private_bytes(raw).sign

    def discard(self, new: NewKey) -> None:
        pass  # nothing exists outside the row that was not written
