"""The chain's outside witnesses: copies of what the database held, kept where the database's
owner cannot rewrite them.

- **Checkpoint copies** in the audit bucket under object lock (`audit-checkpoints/`), one
  object per checkpoint, written once it is committed. Keys count down from 10^20, so the
  bucket lists the newest first and one LIST of one key finds it. Without a bucket, read-only
  files in `MARKETPLACE_AUDIT_EXPORT_DIR/checkpoints/` (development: the same host, so a
  weaker witness, said in docs/audit.md).
- **Export digests**: the newest daily digest in the bucket (audit.exports), found by listing
  this year's and last year's keys.
- **The Kernel's copy** of the chain (marketplace.kernel `audit_head`), when one is configured.

audit.verify compares the database with each, and the window no witness has seen yet is what
`unwitnessed` measures.
"""

import json
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.utils import timezone

from audit.chain import checkpoint_document
from audit.exports.files import DIGEST_SUFFIX, KEY_PREFIX
from audit.models import Checkpoint
from marketplace.kernel import KernelUnavailable, get_kernel

CHECKPOINT_PREFIX = "audit-checkpoints"
_COUNTDOWN = 10**20


@dataclass(frozen=True)
class Witness:
    """What one witness saw: event `sequence` with hash `hash`. `checkpoint` is the witnessed
    checkpoint document, for the bucket's checkpoint copies."""

    name: str
    sequence: int
    hash: str
    checkpoint: dict[str, Any] | None = None


class WitnessUnavailable(Exception):
    """A witness could not be read; verification says so rather than pass without it."""


def checkpoint_key(sequence: int) -> str:
    return f"{CHECKPOINT_PREFIX}/{_COUNTDOWN - sequence:020d}.json"


def _local_folder() -> Path:
    return Path(settings.AUDIT_EXPORT_DIR) / "checkpoints"


def _s3() -> Any:
    from audit.exports.stores import _s3_client

    return _s3_client()


def checkpoint_witness_store(checkpoint: Checkpoint) -> None:
    """Stores the checkpoint's copy (create-only: a second store of the same one is a no-op)."""
    body = json.dumps(checkpoint_document(checkpoint), sort_keys=True).encode()
    key = checkpoint_key(checkpoint.sequence)
    if settings.AUDIT_BUCKET:
        import io

        from marketplace.objectlock import object_lock_put

        object_lock_put(
            _s3(),
            bucket=settings.AUDIT_BUCKET,
            key=key,
            body=io.BytesIO(body),
            retain_until=timezone.now() + timedelta(days=settings.AUDIT_RETENTION_DAYS),
            content_type="application/json",
            create_only=True,
        )
        return
    folder = _local_folder()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / Path(key).name
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
    except FileExistsError:
        return
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(body)


def _checkpoint_witness() -> Witness | None:
    if settings.AUDIT_BUCKET:
        client = _s3()
        try:
            listed = client.list_objects_v2(
                Bucket=settings.AUDIT_BUCKET, Prefix=f"{CHECKPOINT_PREFIX}/", MaxKeys=1
            )
            contents = listed.get("Contents") or []
            if not contents:
                return None
            raw = client.get_object(Bucket=settings.AUDIT_BUCKET, Key=contents[0]["Key"])
            body = raw["Body"].read()
        except Exception as exc:  # botocore's errors, connection and client alike
            raise WitnessUnavailable(
                f"the audit bucket's checkpoints cannot be read: {exc}"
            ) from exc
    else:
        folder = _local_folder()
        names = (
            sorted(name for name in os.listdir(folder) if name.endswith(".json"))
            if (folder.is_dir())
            else []
        )
        if not names:
            return None
        body = (folder / names[0]).read_bytes()
    try:
        document = json.loads(body)
        return Witness(
            "the audit bucket's last checkpoint",
            int(document["sequence"]),
            str(document["hash"]),
            checkpoint=document,
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise WitnessUnavailable(f"the last checkpoint copy is unreadable: {exc}") from exc


def _export_witness() -> Witness | None:
    """The newest export digest's last event (exports of empty days carry none)."""
    digest: dict[str, Any] | None = None
    if settings.AUDIT_BUCKET:
        client = _s3()
        year = timezone.now().year
        keys: list[str] = []
        try:
            for prefix in (f"{KEY_PREFIX}/{year}/", f"{KEY_PREFIX}/{year - 1}/"):
                pages = client.get_paginator("list_objects_v2").paginate(
                    Bucket=settings.AUDIT_BUCKET, Prefix=prefix
                )
                for page in pages:
                    keys += [
                        item["Key"]
                        for item in page.get("Contents") or []
                        if item["Key"].endswith(DIGEST_SUFFIX)
                    ]
                if keys:
                    break
            if not keys:
                return None
            body = client.get_object(Bucket=settings.AUDIT_BUCKET, Key=max(keys))["Body"].read()
        except Exception as exc:
            raise WitnessUnavailable(f"the audit bucket's exports cannot be read: {exc}") from exc
    else:
        root = Path(settings.AUDIT_EXPORT_DIR)
        found = sorted(root.glob(f"*/*/*/*{DIGEST_SUFFIX}")) if root.is_dir() else []
        if not found:
            return None
        body = found[-1].read_bytes()
    try:
        digest = json.loads(body)
    except ValueError as exc:
        raise WitnessUnavailable(f"the newest export digest is not JSON: {exc}") from exc
    last_sequence, last_hash = digest.get("last_sequence"), digest.get("last_hash")
    if not isinstance(last_sequence, int) or not isinstance(last_hash, str):
        # An empty day: the digest pins where the previous one ended.
        last_sequence, last_hash = digest.get("previous_sequence"), digest.get("previous_hash")
    if not isinstance(last_sequence, int) or not last_sequence:
        return None
    return Witness("the newest export digest", last_sequence, str(last_hash))


def _kernel_witness() -> Witness | None:
    try:
        head = get_kernel().audit_head()
    except KernelUnavailable as exc:
        raise WitnessUnavailable(str(exc)) from exc
    if head is None or not head.acknowledged_through or head.hash is None:
        return None
    return Witness("the Kernel's copy", head.acknowledged_through, head.hash)


def witnesses_read() -> tuple[list[Witness], list[str]]:
    """Every witness that has seen something, and a note for each that could not be read."""
    found, notes = [], []
    for read in (_checkpoint_witness, _export_witness, _kernel_witness):
        try:
            witness = read()
        except WitnessUnavailable as exc:
            notes.append(str(exc))
            continue
        except OSError as exc:
            notes.append(f"a witness cannot be read: {exc}")
            continue
        if witness is not None:
            found.append(witness)
    return found, notes
