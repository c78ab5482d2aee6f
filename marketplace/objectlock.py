"""The one writer of objects under S3 object lock, for delivery packages and audit exports.

Every object is written in COMPLIANCE mode: until its retention date nobody (the bucket's
owner and the root account included) can delete or overwrite that version. The bucket must
have been created with object lock enabled (`object_lock_check` checks it).
"""

import base64
from collections.abc import Callable
from datetime import datetime
from typing import Any, BinaryIO

from botocore.exceptions import ClientError

from marketplace.storages import s3_transfer_config

NOT_FOUND_CODES = ("404", "NoSuchKey", "NotFound")


def s3_error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def s3_head(client: Any, *, bucket: str, key: str) -> dict[str, Any] | None:
    """The object's HEAD, or None when there is no such key."""
    try:
        return client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if s3_error_code(exc) in NOT_FOUND_CODES:
            return None
        raise


def object_lock_put(
    client: Any,
    *,
    bucket: str,
    key: str,
    body: BinaryIO,
    retain_until: datetime | None,
    content_type: str,
    metadata: dict[str, str] | None = None,
    kms_key_id: str = "",
    create_only: bool = False,
    sha256: bytes | None = None,
    progress: Callable[[int], None] | None = None,
) -> bool:
    """Writes `body` under `key`, retained (COMPLIANCE) until `retain_until`; None writes it
    without retention, which only development allows (production refuses the settings that
    ask for it). SSE-KMS under `kms_key_id` when given.

    `create_only`: the write happens only if the key does not exist yet (If-None-Match, so of
    two concurrent writers exactly one creates it); answers False, writing nothing, when it
    did exist. Such a write is one PutObject, for objects up to 5 GB, checked by S3 against
    `sha256` when given. Otherwise the body is streamed in parts (memory bounded whatever its
    size) and a new version is added if the key exists; `progress` is then called with each
    number of bytes sent (from s3transfer's threads), as they are sent.
    """
    extra: dict[str, Any] = {"ContentType": content_type}
    if retain_until is not None:
        extra["ObjectLockMode"] = "COMPLIANCE"
        extra["ObjectLockRetainUntilDate"] = retain_until
    if metadata:
        extra["Metadata"] = metadata
    if kms_key_id:
        extra["ServerSideEncryption"] = "aws:kms"
        extra["SSEKMSKeyId"] = kms_key_id
    if not create_only:
        client.upload_fileobj(
            body, bucket, key, ExtraArgs=extra, Config=s3_transfer_config(), Callback=progress
        )
        return True
    if sha256 is not None:
        # Object-lock puts need an integrity check; S3 verifies the bytes against this one.
        extra["ChecksumAlgorithm"] = "SHA256"
        extra["ChecksumSHA256"] = base64.b64encode(sha256).decode()
    try:
        # s3transfer cannot send If-None-Match: one PutObject.
        client.put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*", **extra)
    except ClientError as exc:
        if s3_error_code(exc) not in ("PreconditionFailed", "412"):
            raise
        return False
    return True
