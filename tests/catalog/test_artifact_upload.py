import hashlib
import io
import os
import tracemalloc
from pathlib import Path

import pytest
from django.core.files.storage import default_storage

from catalog import services
from catalog.exceptions import ArtifactTooLarge, ArtifactUploadFailed, SkuLocked
from catalog.models import Artifact, Sku, SkuStatus
from tests.catalog.factories import TEST_ACTOR, SkuFactory, publish_sku

pytestmark = pytest.mark.django_db

MiB = 1024 * 1024


class PatternStream(io.RawIOBase):
    """`size` bytes generated as they are read, optionally breaking after `fail_after` bytes
    the way a client connection that drops mid-upload does."""

    def __init__(self, size: int, *, fail_after: int | None = None) -> None:
        self.size = size
        self.fail_after = fail_after
        self.position = 0
        self.sha256 = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:
        if self.fail_after is not None and self.position >= self.fail_after:
            raise ConnectionResetError("the client went away")
        count = min(len(buffer), self.size - self.position)
        chunk = bytes((self.position + i) % 251 for i in range(min(count, 4096))) * (
            count // 4096 + 1
        )
        chunk = chunk[:count]
        buffer[:count] = chunk
        self.sha256.update(chunk)
        self.position += count
        return count


def stored_keys(s3=None) -> list[str]:
    if s3 is not None:
        listing = s3.client.list_objects_v2(Bucket=s3.name)
        return [item["Key"] for item in listing.get("Contents", [])]
    root = Path(default_storage.location)
    return [str(path.relative_to(root)) for path in root.rglob("*") if path.is_file()]


@pytest.fixture(params=["local", "s3"])
def storage_backend(request):
    """Runs a test on local files and on the S3 server, as configured in production."""
    if request.param == "s3":
        return request.getfixturevalue("s3_storage")
    return None


def test_upload_streams_and_records_sha256_and_size(publisher, storage_backend):
    sku = SkuFactory(partner=publisher.partner)
    source = PatternStream(3 * MiB + 17)

    artifact = services.sku_artifact_upload(
        sku=sku,
        content=source,
        filename="../../etc/My Package.zip",
        content_type="application/zip",
        actor=TEST_ACTOR,
    )

    assert artifact.size == 3 * MiB + 17
    assert artifact.sha256 == source.sha256.hexdigest()
    assert artifact.filename == "My_Package.zip"
    assert artifact.storage_key.startswith("artifacts/")
    assert artifact.storage_key.endswith("/My_Package.zip")
    assert stored_keys(storage_backend) == [artifact.storage_key]
    with default_storage.open(artifact.storage_key, "rb") as stored:
        assert hashlib.sha256(stored.read()).hexdigest() == artifact.sha256
    sku.refresh_from_db()
    assert sku.artifact == artifact


def test_an_upload_failing_halfway_leaves_nothing_behind(publisher, storage_backend):
    sku = SkuFactory(partner=publisher.partner)
    previous = services.sku_artifact_upload(
        sku=sku, content=io.BytesIO(b"v1"), filename="v1.zip", actor=TEST_ACTOR
    )
    # Past the 8 MiB multipart threshold, so S3 has parts to abort.
    source = PatternStream(20 * MiB, fail_after=12 * MiB)

    with pytest.raises(ArtifactUploadFailed, match="Nothing was kept"):
        services.sku_artifact_upload(sku=sku, content=source, filename="v2.zip", actor=TEST_ACTOR)

    sku.refresh_from_db()
    assert sku.artifact == previous
    assert Artifact.objects.count() == 1
    assert stored_keys(storage_backend) == [previous.storage_key]
    if storage_backend is not None:
        uploads = storage_backend.client.list_multipart_uploads(Bucket=storage_backend.name)
        assert uploads.get("Uploads", []) == []


def test_an_artifact_over_the_size_limit_is_refused(publisher, settings, storage_backend):
    settings.ARTIFACT_MAX_BYTES = 1 * MiB
    sku = SkuFactory(partner=publisher.partner)

    with pytest.raises(ArtifactTooLarge, match="MARKETPLACE_ARTIFACT_MAX_BYTES"):
        services.sku_artifact_upload(
            sku=sku, content=PatternStream(2 * MiB), filename="big.bin", actor=TEST_ACTOR
        )

    assert Sku.objects.get(pk=sku.pk).artifact is None
    assert stored_keys(storage_backend) == []


def test_an_empty_artifact_is_refused(publisher):
    sku = SkuFactory(partner=publisher.partner)
    with pytest.raises(ArtifactUploadFailed, match="empty"):
        services.sku_artifact_upload(
            sku=sku, content=io.BytesIO(b""), filename="empty.zip", actor=TEST_ACTOR
        )
    assert stored_keys() == []


def test_a_sku_activated_during_the_upload_keeps_its_artifact_and_the_file_goes(
    publisher, storage_backend
):
    """The admin form was loaded while the SKU was a draft; someone activated it meanwhile."""
    active = publish_sku(publisher)
    stale = Sku.objects.get(pk=active.pk)
    stale.status = SkuStatus.DRAFT
    keys_before = stored_keys(storage_backend)

    with pytest.raises(SkuLocked):
        services.sku_artifact_upload(
            sku=stale, content=io.BytesIO(b"late"), filename="late.zip", actor=TEST_ACTOR
        )

    assert Sku.objects.get(pk=active.pk).artifact == active.artifact
    assert stored_keys(storage_backend) == keys_before


def _peak_upload_memory(publisher, size: int) -> int:
    sku = SkuFactory(partner=publisher.partner)
    tracemalloc.start()
    try:
        artifact = services.sku_artifact_upload(
            sku=sku, content=PatternStream(size), filename="big.bin", actor=TEST_ACTOR
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert artifact.size == size
    return peak


@pytest.mark.s3
def test_s3_upload_memory_does_not_grow_with_the_artifact(publisher, s3_storage):
    medium = _peak_upload_memory(publisher, 48 * MiB)
    large = _peak_upload_memory(publisher, 144 * MiB)

    # Three times the bytes, the same buffers: a few 8 MiB parts, never the whole file.
    assert large - medium < 8 * MiB, (medium / MiB, large / MiB)
    assert large < 100 * MiB


def test_local_upload_reads_in_bounded_chunks(publisher):
    sku = SkuFactory(partner=publisher.partner)
    reads: list[int] = []

    class Recording(PatternStream):
        def readinto(self, buffer: memoryview) -> int:
            reads.append(len(buffer))
            return super().readinto(buffer)

    services.sku_artifact_upload(
        sku=sku, content=Recording(5 * MiB), filename="x.bin", actor=TEST_ACTOR
    )

    assert max(reads) <= 64 * 1024  # File.DEFAULT_CHUNK_SIZE
    assert os.path.getsize(Path(default_storage.location) / sku.artifacts.get().storage_key) == (
        5 * MiB
    )


def test_orphaned_uploads_are_swept_after_the_grace_period(publisher, storage_backend):
    from datetime import timedelta

    from django.utils import timezone

    kept = publish_sku(publisher).artifact
    orphan = services.artifact_store(content=io.BytesIO(b"form sent back"), filename="o.zip")

    assert (
        services.artifact_orphans_delete(
            older_than=timezone.now() - timedelta(days=1), actor=TEST_ACTOR
        )
        == []
    )
    assert services.artifact_orphans_delete(
        older_than=timezone.now() + timedelta(seconds=5), actor=TEST_ACTOR
    ) == [orphan.storage_key]
    assert stored_keys(storage_backend) == [kept.storage_key]
