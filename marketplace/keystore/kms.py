"""The KMS backend: ECDSA P-256 (ES256) keys that never leave AWS KMS."""

import hashlib
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.exceptions import HTTPClientError as BotoHTTPClientError
from django.conf import settings

from marketplace.jwk import ES256, es256_signature_from_der, public_key_from_der
from marketplace.keystore.base import NewKey
from marketplace.keystore.errors import KeyStoreError, KeyStoreUnavailable
from marketplace.models import SigningKey, SigningKeyBackend

logger = logging.getLogger(__name__)

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
