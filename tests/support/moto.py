"""An S3-compatible server (moto in server mode) in its own process on loopback."""

import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest

from marketplace.storages import s3_storage as s3_storage_config
from tests.support.net import free_port, wait_for_http

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
REGION = "us-east-1"


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{endpoint}/moto-api/")
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=10)


@dataclass
class S3Bucket:
    endpoint: str
    name: str
    client: Any


@pytest.fixture
def s3_bucket(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> S3Bucket:
    """A fresh object-lock bucket on the moto server."""
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name=REGION)
    name = f"marketplace-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    return S3Bucket(endpoint=moto_endpoint, name=name, client=client)


@pytest.fixture
def s3_storage(s3_bucket: S3Bucket, settings: Any) -> S3Bucket:
    """Makes the default storage the S3 bucket, configured as production configures it."""
    settings.STORAGES = {
        **settings.STORAGES,
        "default": s3_storage_config(
            bucket=s3_bucket.name, endpoint_url=s3_bucket.endpoint, region=REGION, kms_key_id=""
        ),
    }
    return s3_bucket


@dataclass
class KmsKey:
    endpoint: str
    key_id: str
    client: Any


@pytest.fixture
def kms_key(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, settings: Any) -> KmsKey:
    """A symmetric key in moto's KMS, made the delivery data-key key (generate and unwrap)."""
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("kms", endpoint_url=moto_endpoint, region_name=REGION)
    key_id = client.create_key(KeySpec="SYMMETRIC_DEFAULT", KeyUsage="ENCRYPT_DECRYPT")[
        "KeyMetadata"
    ]["KeyId"]
    settings.DELIVERY_KMS_KEY_ID = key_id
    settings.KMS_ENDPOINT_URL = moto_endpoint
    settings.KMS_REGION = REGION
    return KmsKey(endpoint=moto_endpoint, key_id=key_id, client=client)
