"""Storage options shared by the settings and by whatever builds an S3 storage on its own
(imported by the settings: nothing here may touch Django's settings or models)."""

from typing import Any

from boto3.s3.transfer import TransferConfig


def s3_transfer_config() -> TransferConfig:
    """Parts of 8 MiB, at most 4 in flight and 4 read ahead: an upload's memory is bounded
    (under 100 MiB, parts and their copies) whatever the artifact's size."""
    config = TransferConfig(
        multipart_threshold=8 * 1024 * 1024,
        multipart_chunksize=8 * 1024 * 1024,
        max_concurrency=4,
    )
    # Not a constructor argument of boto3's TransferConfig; s3transfer reads it when it
    # buffers the parts of a stream it cannot seek in (10 by default).
    config.max_in_memory_upload_chunks = 4
    return config


def s3_storage(*, bucket: str, endpoint_url: str, region: str, kms_key_id: str) -> dict[str, Any]:
    object_parameters: dict[str, str] = {}
    if kms_key_id:
        object_parameters = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms_key_id}
    return {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": bucket,
            "endpoint_url": endpoint_url or None,
            "region_name": region,
            "default_acl": None,
            "file_overwrite": False,
            "querystring_auth": True,
            "querystring_expire": 300,
            "object_parameters": object_parameters,
            "transfer_config": s3_transfer_config(),
        },
    }
