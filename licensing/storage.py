"""Where delivery packages are kept.

With MARKETPLACE_S3_BUCKET set, in that bucket under `deliveries/`, uploaded with boto3 through
django-storages' connection: object-lock retention (COMPLIANCE, MARKETPLACE_DELIVERY_RETENTION_DAYS)
so a delivered package cannot be altered or deleted, SSE-KMS when MARKETPLACE_S3_KMS_KEY_ID is
set, and the package's metadata on the object. Otherwise in files under
MARKETPLACE_DATA_DIR/deliveries, written first to a partial file in its `.partial` folder.
"""

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from botocore.exceptions import ClientError
from django.conf import settings
from django.core.files.storage import FileSystemStorage, Storage, storages
from django.utils import timezone

from licensing.envelope import WRITE_SIZE
from marketplace.objectlock import object_lock_put, s3_error_code, s3_head


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


# Local partial package files live here, under the deliveries folder (so a rename puts them in
# place) but apart from the packages: `<delivery id>.<attempt>.<random>.part`, so the spool sweep
# lists one folder and knows which attempt each file is of.
PARTIAL_DIR = "deliveries/.partial"
PARTIAL_SUFFIX = ".part"


@dataclass(frozen=True)
class PartialFile:
    """A partial package file: an attempt's spool, or the leftover of a killed one."""

    path: Path
    delivery_id: str  # "" when the name names no attempt
    attempt: int | None
    modified: datetime


@dataclass(frozen=True)
class PartialUpload:
    """An S3 multipart upload of a package, not completed (nor aborted) yet."""

    key: str
    upload_id: str
    delivery_id: str
    initiated: datetime


def _partial_dir(storage: Storage) -> Path:
    return Path(storage.path(PARTIAL_DIR))


@contextlib.contextmanager
def package_spool(name: str, *, owner: str = "") -> Iterator[BinaryIO]:
    """A file to write the package of `name` into before it is stored, removed when the block
    ends however it ends. `owner` (`<delivery id>.<attempt>`) names the attempt writing it.

    For local files it is a file in PARTIAL_DIR, which package_store then renames into place: a
    1 GiB package is written once, not written and copied. A worker killed while writing leaves
    it behind, for delivery_spool_sweep. For S3 it is an anonymous temporary file (gone with
    the process, however it ends) that package_store uploads."""
    storage = _storage()
    if hasattr(storage, "bucket"):
        with tempfile.TemporaryFile() as spool:
            yield spool
        return
    folder = _partial_dir(storage)
    folder.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(
        prefix=f"{owner or 'spool'}.", suffix=PARTIAL_SUFFIX, dir=folder
    )
    os.close(handle)
    try:
        # Opened by path, so that package_store finds it by its name.
        with open(temp, "w+b") as spool:
            yield spool
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)


def partial_files() -> list[PartialFile]:
    """The local partial package files, oldest first; none on S3 (its spool files are
    anonymous)."""
    storage = _storage()
    if hasattr(storage, "bucket"):
        return []
    found = []
    with contextlib.suppress(FileNotFoundError), os.scandir(_partial_dir(storage)) as entries:
        for entry in entries:
            if not entry.name.endswith(PARTIAL_SUFFIX) or not entry.is_file():
                continue
            try:
                modified = entry.stat().st_mtime
            except FileNotFoundError:  # its attempt just finished
                continue
            delivery_id, _, rest = entry.name.partition(".")
            attempt = rest.partition(".")[0]
            named = attempt.isdigit()
            found.append(
                PartialFile(
                    path=Path(entry.path),
                    delivery_id=delivery_id if named else "",
                    attempt=int(attempt) if named else None,
                    modified=datetime.fromtimestamp(modified, tz=UTC),
                )
            )
    return sorted(found, key=lambda partial: partial.modified)


def partial_file_remove(partial: PartialFile) -> bool:
    try:
        partial.path.unlink()
    except FileNotFoundError:
        return False
    return True


def partial_uploads() -> list[PartialUpload]:
    """The multipart uploads of packages S3 still holds open: a worker killed mid-upload
    leaves one (its parts are stored, and billed, until it is aborted). None for local files."""
    storage = _storage()
    if not hasattr(storage, "bucket"):
        return []
    client, bucket = storage.bucket.meta.client, storage.bucket.name
    found = []
    prefix = storage._normalize_name("deliveries/")
    for page in client.get_paginator("list_multipart_uploads").paginate(
        Bucket=bucket, Prefix=prefix
    ):
        for upload in page.get("Uploads", []):
            # deliveries/<order id>/<delivery id>.mkpkg
            stem = upload["Key"].rsplit("/", 1)[-1]
            found.append(
                PartialUpload(
                    key=upload["Key"],
                    upload_id=upload["UploadId"],
                    delivery_id=stem.removesuffix(".mkpkg"),
                    initiated=upload["Initiated"],
                )
            )
    return found


def partial_upload_abort(upload: PartialUpload) -> bool:
    """Aborts the upload; False when S3 no longer has it (completed or aborted since it was
    listed). Raises botocore's ClientError for any other refusal."""
    storage = _storage()
    try:
        storage.bucket.meta.client.abort_multipart_upload(
            Bucket=storage.bucket.name, Key=upload.key, UploadId=upload.upload_id
        )
    except ClientError as exc:
        if s3_error_code(exc) == "NoSuchUpload":
            return False
        raise
    return True


def package_store(
    name: str,
    package: BinaryIO,
    *,
    metadata: dict[str, str],
    progress: Callable[[int], None] | None = None,
) -> None:
    """Stores the package under `name`. Packaging is deterministic, so storing the same name
    again (a retry) stores the same bytes: on S3 nothing is uploaded when the stored object
    already carries the same metadata (package hash included), otherwise a version is added;
    a local file is replaced atomically, so a reader never sees half a package. On S3
    `progress` is called (from the upload's threads) as bytes are sent."""
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
            progress=progress,
        )
        return
    path = Path(storage.path(name))
    path.parent.mkdir(parents=True, exist_ok=True)
    spooled = getattr(package, "name", None)
    if isinstance(spooled, str) and Path(spooled).parent == _partial_dir(storage):
        # package_spool's file, on the same file system: made durable and renamed, not copied.
        package.flush()
        os.fsync(package.fileno())
        os.replace(spooled, path)
        return
    _partial_dir(storage).mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(
        prefix="store.", suffix=PARTIAL_SUFFIX, dir=_partial_dir(storage)
    )
    try:
        with os.fdopen(handle, "wb") as out:
            # In envelope.WRITE_SIZE pieces: 1 MiB writes cost the kernel far more here.
            shutil.copyfileobj(package, out, WRITE_SIZE)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def package_open(name: str) -> BinaryIO:
    return _storage().open(name, "rb")


def packages_presigned() -> bool:
    """Whether buyers download packages from the bucket with presigned URLs (S3) rather than
    through the platform (local files)."""
    return hasattr(_storage(), "bucket")


def package_url(name: str, *, expires_in: int) -> str | None:
    """A presigned S3 URL, or None for local files (the platform serves those itself)."""
    storage = _storage()
    if not hasattr(storage, "bucket"):
        return None
    return storage.url(name, expire=expires_in)
