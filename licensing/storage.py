"""Where delivery packages are kept.

With MARKETPLACE_S3_BUCKET set, in that bucket under `deliveries/`, uploaded with boto3 through
django-storages' connection: object-lock retention (COMPLIANCE, MARKETPLACE_DELIVERY_RETENTION_DAYS)
so a delivered package cannot be altered or deleted, SSE-KMS when MARKETPLACE_S3_KMS_KEY_ID is
set, and the package's metadata on the object. Otherwise in files under
MARKETPLACE_DATA_DIR/deliveries.
"""

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, BinaryIO

from django.conf import settings
from django.core.files.storage import FileSystemStorage, Storage, storages
from django.utils import timezone

from marketplace.objectlock import object_lock_put, s3_head


def delivery_name(*, order_id: str, delivery_id: str) -> str:
    return f"deliveries/{order_id}/{delivery_id}.mkpkg"


def _storage() -> Storage:
    default = storages["default"]
    if hasattr(default, "bucket"):
        return default
    return FileSystemStorage(location=str(Path(settings.DATA_DIR) / "deliveries"))


def _already_stored(storage: Any, key: str, metadata: dict[str, str]) -> bool:
    """Whether the newest version under `key` is this very package, stored with this
    metadata: a retry after a crash between upload and commit then adds no second version
    (object lock would keep it for the whole retention period)."""
    head = s3_head(storage.bucket.meta.client, bucket=storage.bucket.name, key=key)
    return head is not None and head.get("Metadata", {}) == metadata


@contextlib.contextmanager
def package_spool(name: str) -> Iterator[BinaryIO]:
    """A file to write the package of `name` into before it is stored. For local files it is a
    temporary file next to the destination, which package_store then renames into place: a
    1 GiB package is written once, not written and copied. For S3 it is a temporary file that
    package_store uploads."""
    storage = _storage()
    if hasattr(storage, "bucket"):
        with tempfile.TemporaryFile() as spool:
            yield spool
        return
    path = Path(storage.path(name))
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(handle)
    try:
        # Opened by path, so that package_store finds it by its name.
        with open(temp, "w+b") as spool:
            yield spool
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)


def package_store(name: str, package: BinaryIO, *, metadata: dict[str, str]) -> None:
    """Stores the package under `name`. Packaging is deterministic, so storing the same name
    again (a retry) stores the same bytes: on S3 nothing is uploaded when the stored object
    already carries the same metadata (package hash included), otherwise a version is added;
    a local file is replaced atomically, so a reader never sees half a package."""
    storage = _storage()
    if hasattr(storage, "bucket"):
        key = storage._normalize_name(name)
        if _already_stored(storage, key, metadata):
            return
        days = settings.DELIVERY_RETENTION_DAYS
        object_lock_put(
            storage.bucket.meta.client,
            bucket=storage.bucket.name,
            key=key,
            body=package,
            retain_until=timezone.now() + timedelta(days=days) if days > 0 else None,
            content_type="application/octet-stream",
            metadata=metadata,
            kms_key_id=settings.S3_KMS_KEY_ID,
        )
        return
    path = Path(storage.path(name))
    spooled = getattr(package, "name", None)
    if isinstance(spooled, str) and Path(spooled).parent == path.parent:
        # package_spool's file, already in place: made durable and renamed, not copied.
        package.flush()
        os.fsync(package.fileno())
        os.replace(spooled, path)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            shutil.copyfileobj(package, out, 1024 * 1024)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def package_open(name: str) -> BinaryIO:
    return _storage().open(name, "rb")


def package_url(name: str, *, expires_in: int) -> str | None:
    """A presigned S3 URL, or None for local files (the platform serves those itself)."""
    storage = _storage()
    if not hasattr(storage, "bucket"):
        return None
    return storage.url(name, expire=expires_in)
