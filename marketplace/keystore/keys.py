"""The key records: making a key in its backend, recording it, retiring and revoking it, signing
with it, and reading the public halves.

These functions change `SigningKey` rows and nothing else: the audit events of those changes
are written by their caller (audit.signing_keys), in the same transaction.
"""

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db.models import Q
from django.utils import timezone

from marketplace.jwk import PublicKey, public_key_from_der
from marketplace.keystore.base import Backend, NewKey
from marketplace.keystore.errors import KeyStoreError
from marketplace.keystore.kms import KmsBackend
from marketplace.keystore.local import LocalBackend
from marketplace.keystore.proxy import ProxyBackend
from marketplace.models import SigningKey, SigningKeyBackend, SigningKeyPurpose, SigningKeyStatus


def keystore_backend(name: str) -> Backend:
    if name == SigningKeyBackend.LOCAL:
        return LocalBackend()
    if name == SigningKeyBackend.KMS:
        return KmsBackend()
    if name == SigningKeyBackend.PROXY:
        return ProxyBackend()
    raise ImproperlyConfigured(f"unknown key-store backend {name!r}")


def _backend_for_purpose(purpose: str) -> Backend:
    if purpose == SigningKeyPurpose.AUDIT:
        return LocalBackend()
    return keystore_backend(settings.KEYSTORE_BACKEND)


# --- Making and recording keys -----------------------------------------------------------------


@dataclass(frozen=True)
class PreparedKey:
    """A key its backend has made (or the configured KMS key, adopted), not recorded yet."""

    purpose: str
    kid: str
    backend: Backend
    material: NewKey
    adopted: bool

    def record(self) -> SigningKey:
        """Records the key as its purpose's active key, in the caller's transaction. Raises
        IntegrityError when the purpose already has an active key."""
        return SigningKey.objects.create(
            kid=self.kid,
            purpose=self.purpose,
            algorithm=self.material.algorithm,
            backend=self.backend.name,
            backend_key_id=self.material.backend_key_id,
            public_key=self.material.public_key,
            private_key_sealed=self.material.private_key_sealed,
        )

    def discard(self) -> None:
        """Best effort: gives up a key that was made and not recorded. An adopted key is the
        operators', and is left alone."""
        if not self.adopted:
            self.backend.discard(self.material)

    def description(self) -> dict[str, Any]:
        """Where the key lives, as its creation's audit event records it."""
        data: dict[str, Any] = {"backend": self.backend.name}
        if self.material.backend_key_id:
            data["backend_key_id"] = self.material.backend_key_id
            data["adopted"] = self.adopted
        return data


def _new_kid(purpose: str) -> str:
    return f"{purpose}-{timezone.now():%Y%m%d}-{secrets.token_hex(4)}"


def key_prepare(*, purpose: str) -> PreparedKey:
    """A new key for the purpose from its backend: made there, or (for licenses on KMS, the
    first time) the configured key adopted. Calls the backend: run it outside any
    transaction. Raises KeyStoreUnavailable when the backend is out."""
    backend = _backend_for_purpose(purpose)
    kid = _new_kid(purpose)
    configured = settings.LICENSE_SIGNER_KEY_ID
    if isinstance(backend, KmsBackend) and purpose == SigningKeyPurpose.LICENSE and configured:
        # A key once used and since retired or revoked is never made active again. Keys are
        # recorded by ARN; an ARN or a bare key id is recognised without calling KMS, so a
        # retired key that operators have since disabled does not stand in the way.
        kms_keys = SigningKey.objects.filter(backend=backend.name)
        known = kms_keys.filter(
            Q(backend_key_id=configured) | Q(backend_key_id__endswith=f":key/{configured}")
        ).exists()
        if not known:
            material = backend.adopt(configured)
            if not kms_keys.filter(backend_key_id=material.backend_key_id).exists():
                return PreparedKey(purpose, kid, backend, material, adopted=True)
    material = backend.create(kid=kid, purpose=purpose)
    return PreparedKey(purpose, kid, backend, material, adopted=False)


def key_active(*, purpose: str) -> SigningKey | None:
    return SigningKey.objects.filter(purpose=purpose, status=SigningKeyStatus.ACTIVE).first()


def key_retire_active(*, purpose: str) -> SigningKey | None:
    """Retires the purpose's active key (it goes on verifying), under its row lock, in the
    caller's transaction. None when the purpose has no active key."""
    key = (
        SigningKey.objects.select_for_update()
        .filter(purpose=purpose, status=SigningKeyStatus.ACTIVE)
        .first()
    )
    if key is not None:
        key.status = SigningKeyStatus.RETIRED
        key.retired_at = timezone.now()
        key.save(update_fields=["status", "retired_at"])
    return key


def key_mark_revoked(*, kid: str, reason: str) -> tuple[SigningKey, bool]:
    """Revokes the key under its row lock, in the caller's transaction. Answers the key and
    whether it changed (False when it was revoked already)."""
    key = SigningKey.objects.select_for_update().get(kid=kid)
    if key.status == SigningKeyStatus.REVOKED:
        return key, False
    key.status = SigningKeyStatus.REVOKED
    key.revoked_at = timezone.now()
    key.revoked_reason = reason
    key.save(update_fields=["status", "revoked_at", "revoked_reason"])
    return key, True


# --- Signing -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Signer:
    kid: str
    algorithm: str
    _sign: Callable[[bytes], bytes]

    def sign(self, message: bytes) -> bytes:
        """The JOSE-form signature of `message` (64 bytes for both EdDSA and ES256). Raises
        KeyStoreUnavailable when a remote backend is out (retry later), KeyStoreError when it
        refuses."""
        return self._sign(message)


def signer_for(key: SigningKey) -> Signer:
    """What signs with `key`, which must be active. A remote backend's signature is checked
    against the key's recorded public half before it is returned, so a proxy or KMS key that
    does not match what is published cannot put unverifiable signatures into circulation."""
    if key.status != SigningKeyStatus.ACTIVE:
        raise KeyStoreError(f"{key.kid} is {key.status} and no longer signs")
    backend = keystore_backend(key.backend)
    sign = backend.signing_function(key)
    if key.backend == SigningKeyBackend.LOCAL:
        return Signer(key.kid, key.algorithm, sign)
    public = _public_key_of(key)

    def checked(message: bytes) -> bytes:
        signature = sign(message)
        if not public.verifies(signature, message):
            raise KeyStoreError(
                f"the {key.backend} backend returned a signature that {key.kid}'s public key "
                "does not verify"
            )
        return signature

    return Signer(key.kid, key.algorithm, checked)


# --- Public keys, offline ----------------------------------------------------------------------


def _public_key_of(key: SigningKey) -> PublicKey:
    try:
        public = public_key_from_der(key.kid, bytes(key.public_key))
    except ValueError as exc:
        raise KeyStoreError(str(exc)) from exc
    if public.algorithm != key.algorithm:
        raise KeyStoreError(f"{key.kid} is recorded as {key.algorithm} but is {public.algorithm}")
    return public


def jwk_of(key: SigningKey) -> dict[str, Any]:
    """The key's public JWK: OKP/Ed25519 (EdDSA) or EC/P-256 (ES256), with kid, alg, use."""
    return _public_key_of(key).jwk()


def jwks_of(keys: "list[SigningKey]") -> dict[str, Any]:
    return {"keys": [jwk_of(key) for key in keys if key.status != SigningKeyStatus.REVOKED]}


def public_keys_from_store(*, purpose: SigningKeyPurpose) -> dict[str, PublicKey]:
    """Every key of the purpose that still verifies (active or retired)."""
    return {
        key.kid: _public_key_of(key)
        for key in SigningKey.objects.verifying().filter(purpose=purpose)
    }
