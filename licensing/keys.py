"""Data keys of delivery packages: generated fresh per delivery and stored only wrapped.

With MARKETPLACE_DELIVERY_KMS_KEY_ID set, KMS makes the key (`GenerateDataKey`, AES_256) and
only KMS unwraps it (`Decrypt`), both bound to the delivery by an encryption context. Otherwise
the local key store's master key wraps it with AES-256-GCM, the delivery id as associated data.
"""

import secrets
from dataclasses import dataclass

from botocore.exceptions import BotoCoreError, ClientError
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings

from marketplace.keystore import kms_client, master_key


class DataKeyUnavailable(Exception):
    """KMS could not be reached: try again later."""


class DataKeyError(Exception):
    """The wrapped key cannot be unwrapped (wrong master key, refused by KMS)."""


@dataclass(frozen=True)
class DataKey:
    plaintext: bytes
    wrapped: bytes
    wrapping: str


def _context(delivery_id: str) -> dict[str, str]:
    return {"marketplace:delivery": delivery_id}


def data_key_generate(*, delivery_id: str) -> DataKey:
    key_id = settings.DELIVERY_KMS_KEY_ID
    if key_id:
        try:
            answer = kms_client().generate_data_key(
                KeyId=key_id, KeySpec="AES_256", EncryptionContext=_context(delivery_id)
            )
        except (BotoCoreError, ClientError) as exc:
            raise DataKeyUnavailable(f"KMS GenerateDataKey failed: {exc}") from exc
        return DataKey(answer["Plaintext"], answer["CiphertextBlob"], f"kms:{key_id}")
    plaintext = secrets.token_bytes(32)
    nonce = secrets.token_bytes(12)
    wrapped = nonce + AESGCM(master_key()).encrypt(nonce, plaintext, delivery_id.encode())
    return DataKey(plaintext, wrapped, "local")


def data_key_unwrap(*, delivery_id: str, wrapped: bytes, wrapping: str) -> bytes:
    if wrapping.startswith("kms:"):
        try:
            answer = kms_client().decrypt(
                CiphertextBlob=wrapped,
                KeyId=wrapping.removeprefix("kms:"),
                EncryptionContext=_context(delivery_id),
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("InvalidCiphertextException", "AccessDeniedException", "NotFoundException"):
                raise DataKeyError(f"KMS refused to unwrap the data key: {code}") from exc
            raise DataKeyUnavailable(f"KMS Decrypt failed: {exc}") from exc
        except BotoCoreError as exc:
            raise DataKeyUnavailable(f"KMS Decrypt failed: {exc}") from exc
        return answer["Plaintext"]
    try:
        return AESGCM(master_key()).decrypt(wrapped[:12], wrapped[12:], delivery_id.encode())
    except InvalidTag:
        raise DataKeyError(
            "the data key cannot be unwrapped: the key-store master key is not the one it "
            "was wrapped with"
        ) from None
