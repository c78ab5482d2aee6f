"""The key store: the platform's own signing keys, whichever backend holds their private half.

Three backends (``MARKETPLACE_KEYSTORE_BACKEND``), all behind the same functions:

- ``local``: Ed25519 (JOSE ``EdDSA``) private keys in the database, sealed with AES-256-GCM
  under a master key: ``MARKETPLACE_KEYSTORE_MASTER_KEY`` (32 bytes, base64), or in
  development a key file created on first use in ``MARKETPLACE_DATA_DIR/keys`` (refused in
  production). A stolen database dump therefore holds no usable private key.
- ``kms``: ECDSA P-256 keys (JOSE ``ES256``) in AWS KMS (``ECC_NIST_P256``, ``SIGN_VERIFY``);
  the private key never leaves KMS. KMS signs with ``ECDSA_SHA_256`` and answers DER, which is
  turned into JOSE's ``r || s``. ``MARKETPLACE_LICENSE_SIGNER_KEY_ID`` names an existing key
  that becomes the active license key the first time one is needed.
- ``proxy``: an HTTP signing service at ``MARKETPLACE_SIGNING_ENDPOINT`` that holds the keys
  (EdDSA or ES256), speaking this API (bearer ``MARKETPLACE_SIGNING_TOKEN``, JSON bodies)::

      POST /v1/keys                 {"kid": str, "purpose": str}
          201 (or 200 for a kid it already made)
                                    {"key_ref": str, "alg": "EdDSA"|"ES256", "public_jwk": JWK}
      POST /v1/keys/{key_ref}/sign  {"message": base64url}
          200                       {"signature": base64url}   (JOSE form: ES256 is r || s)

  401/403: the token is refused; 404: no such key; 5xx, 429, a timeout or no connection:
  the service is unavailable (``KeyStoreUnavailable``, retry later).

Only license keys follow the setting; audit keys are always local, because the audit log must
go on checkpointing and exporting while a remote signer is down.

Every key's public half is kept in the database (DER), so publishing the JWK Set (RFC 7517,
RFC 8037) and verifying never call a backend; a signature a remote backend returns is checked
against it before it is used. The helpers that read a JWK Set and check a signature
(``marketplace.jwk``) touch neither the database nor the settings.
"""

import base64
import binascii
import hashlib
import logging
import os
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import boto3
import requests
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.exceptions import HTTPClientError as BotoHTTPClientError
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from marketplace.jwk import (
    ALGORITHMS,
    ED25519,
    ES256,
    PublicKey,
    b64url,
    b64url_decode,
    es256_signature_from_der,
    public_key_from_der,
    public_key_from_jwk,
)
from marketplace.jwk import public_keys_from_jwks as public_keys_from_jwks
from marketplace.models import SigningKey, SigningKeyBackend, SigningKeyPurpose, SigningKeyStatus

logger = logging.getLogger(__name__)


class KeyStoreError(Exception):
    """A key cannot be used or made: the master key is wrong, the key is unknown or not
    active, or the backend refused the request. Retrying the same call will not help."""


class KeyStoreUnavailable(KeyStoreError):
    """The backend (KMS, the signing proxy) did not answer, timed out or failed on its side
    (5xx, throttling). Transient: the caller may retry later, with backoff."""


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


# --- Backends ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewKey:
    """A key a backend has just made (or adopted), before it is recorded."""

    algorithm: str
    public_key: bytes  # SubjectPublicKeyInfo, DER
    backend_key_id: str = ""
    private_key_sealed: bytes = b""


class Backend(Protocol):
    name: SigningKeyBackend

    def create(self, *, kid: str, purpose: str) -> NewKey: ...

    def signing_function(self, key: SigningKey) -> Callable[[bytes], bytes]:
        """What signs with `key`: message in, JOSE-form signature out."""
        ...

    def discard(self, new: NewKey) -> None:
        """Best effort: gives up a key that was made but not recorded (a lost race)."""
        ...


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


# KMS signs at most 4096 bytes as RAW; a longer message is hashed here and sent as DIGEST.
_KMS_RAW_LIMIT = 4096
# Errors that say KMS itself is failing or overloaded, not that the request is wrong.
_KMS_TRANSIENT = {
    "KMSInternalException",
    "DependencyTimeoutException",
    "ThrottlingException",
    "ServiceUnavailableException",
}


def kms_client() -> Any:
    """The KMS client for the configured endpoint, region and timeout (licensing's data keys
    use it too)."""
    return _kms_client(
        settings.KMS_ENDPOINT_URL, settings.KMS_REGION, settings.KEYSTORE_TIMEOUT_SECONDS
    )


@lru_cache(maxsize=8)
def _kms_client(endpoint_url: str, region: str, timeout: float) -> Any:
    # A client per configuration, made once: creating one costs tens of milliseconds. Its own
    # session, because boto3's default session is not safe to share across threads.
    return boto3.session.Session().client(
        "kms",
        endpoint_url=endpoint_url or None,
        region_name=region,
        config=Config(
            connect_timeout=timeout,
            read_timeout=timeout,
            retries={"mode": "standard", "max_attempts": 2},
        ),
    )


class KmsBackend:
    name = SigningKeyBackend.KMS

    def __init__(self) -> None:
        self.endpoint = settings.KMS_ENDPOINT_URL or f"AWS KMS ({settings.KMS_REGION})"
        self.client = kms_client()

    @contextmanager
    def _calling(self, action: str) -> Iterator[None]:
        try:
            yield
        except (BotoConnectionError, BotoHTTPClientError) as exc:
            raise KeyStoreUnavailable(
                f"KMS at {self.endpoint} is unreachable ({action}): {exc}"
            ) from exc
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = error.get("Code", "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            detail = f"KMS at {self.endpoint} refused {action}: {code}: {error.get('Message')}"
            if code in _KMS_TRANSIENT or status >= 500:
                raise KeyStoreUnavailable(detail) from exc
            raise KeyStoreError(detail) from exc
        except BotoCoreError as exc:  # no credentials, no region: the deployment's to fix
            raise KeyStoreError(
                f"KMS at {self.endpoint} cannot be called ({action}): {exc}"
            ) from exc

    def _public(self, key_id: str) -> NewKey:
        # DescribeKey names the key by its ARN whatever `key_id` was (a bare id, an alias), so a
        # key is recorded once however it was configured.
        with self._calling(f"DescribeKey {key_id}"):
            metadata = self.client.describe_key(KeyId=key_id)["KeyMetadata"]
        # CustomerMasterKeySpec is KeySpec's older name; some KMS implementations give only it.
        spec = metadata.get("KeySpec") or metadata.get("CustomerMasterKeySpec")
        if spec != "ECC_NIST_P256" or metadata.get("KeyUsage") != "SIGN_VERIFY":
            raise KeyStoreError(
                f"the KMS key {key_id} is {spec}/{metadata.get('KeyUsage')}; "
                "license keys must be ECC_NIST_P256 keys for SIGN_VERIFY (ES256)"
            )
        if metadata.get("KeyState", "Enabled") != "Enabled":
            raise KeyStoreError(f"the KMS key {key_id} is {metadata['KeyState']}, not Enabled")
        arn = metadata["Arn"]
        with self._calling(f"GetPublicKey {arn}"):
            der = self.client.get_public_key(KeyId=arn)["PublicKey"]
        try:
            public_key_from_der(arn, der)
        except ValueError as exc:
            raise KeyStoreError(f"KMS gave an unreadable public key for {arn}") from exc
        return NewKey(algorithm=ES256, public_key=der, backend_key_id=arn)

    def adopt(self, key_id: str) -> NewKey:
        """An existing KMS key (id, ARN or alias), recorded under its ARN."""
        return self._public(key_id)

    def create(self, *, kid: str, purpose: str) -> NewKey:
        with self._calling("CreateKey"):
            metadata = self.client.create_key(
                KeySpec="ECC_NIST_P256",
                KeyUsage="SIGN_VERIFY",
                Description=f"Marketplace {purpose} signing key {kid}",
                Tags=[{"TagKey": "marketplace-kid", "TagValue": kid}],
            )["KeyMetadata"]
        return self._public(metadata["Arn"])

    def signing_function(self, key: SigningKey) -> Callable[[bytes], bytes]:
        key_id = key.backend_key_id

        def sign(message: bytes) -> bytes:
            if len(message) <= _KMS_RAW_LIMIT:
                body, message_type = message, "RAW"
            else:
                body, message_type = hashlib.sha256(message).digest(), "DIGEST"
            with self._calling(f"Sign with {key_id}"):
                answer = self.client.sign(
                    KeyId=key_id,
                    Message=body,
                    MessageType=message_type,
                    SigningAlgorithm="ECDSA_SHA_256",
                )
            return es256_signature_from_der(answer["Signature"])

        return sign

    def discard(self, new: NewKey) -> None:
        try:
            self.client.schedule_key_deletion(KeyId=new.backend_key_id, PendingWindowInDays=7)
        except (BotoCoreError, ClientError):
            logger.warning(
                "could not schedule the unused KMS key %s for deletion", new.backend_key_id
            )


_proxy_sessions = threading.local()


class ProxyBackend:
    name = SigningKeyBackend.PROXY

    def __init__(self) -> None:
        endpoint = settings.SIGNING_ENDPOINT.rstrip("/")
        if not endpoint:
            raise KeyStoreError(
                "the key is held by the signing proxy but MARKETPLACE_SIGNING_ENDPOINT is not set"
            )
        self.endpoint = endpoint
        self.timeout = settings.KEYSTORE_TIMEOUT_SECONDS
        self.token = settings.SIGNING_TOKEN

    def _post(self, path: str, body: dict[str, Any], action: str) -> dict[str, Any]:
        # One session per thread (requests' sessions are not thread-safe): keeps connections.
        session = getattr(_proxy_sessions, "session", None)
        if session is None:
            session = _proxy_sessions.session = requests.Session()
        url = f"{self.endpoint}{path}"
        try:
            response = session.post(
                url,
                json=body,
                headers={"Authorization": f"Bearer {self.token}"},
                timeout=(self.timeout, self.timeout),
            )
        except requests.RequestException as exc:
            raise KeyStoreUnavailable(f"the signing proxy at {url} is unreachable: {exc}") from exc
        status = response.status_code
        if status >= 500 or status == 429:
            raise KeyStoreUnavailable(f"the signing proxy failed {action} ({status})")
        if status in (401, 403):
            raise KeyStoreError(
                f"the signing proxy refused {action} ({status}): check MARKETPLACE_SIGNING_TOKEN"
            )
        if status >= 300:
            raise KeyStoreError(
                f"the signing proxy refused {action} ({status}): {response.text[:200]}"
            )
        try:
            document = response.json()
        except ValueError:
            document = None
        if not isinstance(document, dict):
            raise KeyStoreError(f"the signing proxy answered {action} with no JSON object")
        return document

    def create(self, *, kid: str, purpose: str) -> NewKey:
        document = self._post("/v1/keys", {"kid": kid, "purpose": purpose}, "making a key")
        key_ref, algorithm, jwk = (document.get(name) for name in ("key_ref", "alg", "public_jwk"))
        if not isinstance(key_ref, str) or not 0 < len(key_ref) <= 255:
            raise KeyStoreError("the signing proxy's new key has no usable key_ref")
        if algorithm not in ALGORITHMS or not isinstance(jwk, dict):
            raise KeyStoreError(
                f"the signing proxy's key {key_ref} is {algorithm!r}; EdDSA or ES256 with a "
                "public_jwk are supported"
            )
        try:
            public = public_key_from_jwk(jwk, kid)
        except ValueError as exc:
            raise KeyStoreError(f"the signing proxy's key {key_ref}: {exc}") from exc
        if public is None or public.algorithm != algorithm:
            raise KeyStoreError(f"the signing proxy's key {key_ref} is not an {algorithm} key")
        return NewKey(algorithm=algorithm, public_key=public.der(), backend_key_id=key_ref)

    def signing_function(self, key: SigningKey) -> Callable[[bytes], bytes]:
        path = f"/v1/keys/{quote(key.backend_key_id, safe='')}/sign"

        def sign(message: bytes) -> bytes:
            document = self._post(path, {"message": b64url(message)}, f"signing with {key.kid}")
            try:
                return b64url_decode(str(document["signature"]))
            except (KeyError, ValueError) as exc:
                raise KeyStoreError("the signing proxy answered with no signature") from exc

        return sign

    def discard(self, new: NewKey) -> None:
        pass  # the API has no deletion: an unused key there signs nothing of ours


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


def _key_material(purpose: str, backend: Backend, kid: str) -> tuple[NewKey, bool]:
    """A new key for the purpose from its backend, and whether it was adopted (the configured
    KMS key, the first time it is used) rather than made. Calls the backend: run it outside
    any transaction."""
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
            new = backend.adopt(configured)
            if not kms_keys.filter(backend_key_id=new.backend_key_id).exists():
                return new, True
    return backend.create(kid=kid, purpose=purpose), False


def _key_record(
    purpose: str, kid: str, backend: Backend, new: NewKey, adopted: bool, actor: Any
) -> SigningKey:
    key = SigningKey.objects.create(
        kid=kid,
        purpose=purpose,
        algorithm=new.algorithm,
        backend=backend.name,
        backend_key_id=new.backend_key_id,
        public_key=new.public_key,
        private_key_sealed=new.private_key_sealed,
    )
    data: dict[str, Any] = {"backend": key.backend}
    if new.backend_key_id:
        data["backend_key_id"] = new.backend_key_id
        data["adopted"] = adopted
    _audit(actor, "signing_key.created", key, data)
    return key


def signing_key_active(*, purpose: SigningKeyPurpose) -> SigningKey:
    """The purpose's active key. When there is none, the purpose's backend makes one (or, for
    licenses on KMS, the configured key is adopted), audited. Raises KeyStoreUnavailable
    when that backend is out."""
    key = SigningKey.objects.filter(purpose=purpose, status=SigningKeyStatus.ACTIVE).first()
    if key is not None:
        return key
    backend = _backend_for_purpose(purpose)
    kid = _new_kid(purpose)
    new, adopted = _key_material(purpose, backend, kid)
    try:
        with transaction.atomic():
            return _key_record(purpose, kid, backend, new, adopted, actor=None)
    except IntegrityError:
        # Another process recorded one first (one active key per purpose is a constraint).
        if not adopted:
            backend.discard(new)
        key = SigningKey.objects.filter(purpose=purpose, status=SigningKeyStatus.ACTIVE).first()
        if key is None:
            raise KeyStoreError(f"no active {purpose} key could be recorded; try again") from None
        return key


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


def signing_key_rotate(
    *, purpose: SigningKeyPurpose, actor: Any = None
) -> tuple[SigningKey, SigningKey | None]:
    """Makes a new active key in the purpose's backend and retires the previous one, which
    goes on verifying. The backend is called first, outside the transaction; the retirement
    and the new key are recorded together, with their audit events.

    Returns the new key and the retired one (None when there was none)."""
    backend = _backend_for_purpose(purpose)
    kid = _new_kid(purpose)
    new, adopted = _key_material(purpose, backend, kid)
    try:
        with transaction.atomic():
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
            key = _key_record(purpose, kid, backend, new, adopted, actor)
    except DatabaseError:
        if not adopted:
            backend.discard(new)
        raise
    return key, previous


@transaction.atomic
def signing_key_revoke(*, kid: str, reason: str, actor: Any = None) -> SigningKey:
    """Revokes a key: what it signed no longer verifies, and it leaves the JWK Set. A revoked
    active key leaves its purpose without one until the next signature creates (or a rotation
    makes) a new key. A remote key is not deleted in its backend: the platform stops using
    and publishing it, and operators disable it there."""
    key = SigningKey.objects.select_for_update().get(kid=kid)
    if key.status != SigningKeyStatus.REVOKED:
        key.status = SigningKeyStatus.REVOKED
        key.revoked_at = timezone.now()
        key.revoked_reason = reason
        key.save(update_fields=["status", "revoked_at", "revoked_reason"])
        _audit(actor, "signing_key.revoked", key, {"reason": reason})
    return key


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
