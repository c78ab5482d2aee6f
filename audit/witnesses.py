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

import io
import json
import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.utils import timezone

from audit.chain import GENESIS_HASH, checkpoint_document
from audit.exports.files import DIGEST_SUFFIX, KEY_PREFIX
from audit.exports.stores import export_key
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
    digest: dict[str, Any] | None = None


class WitnessUnavailable(Exception):
    """A witness could not be read; verification fails, saying so, rather than pass without it."""


class WitnessInvalid(Exception):
    """What the bucket or the Kernel holds is not what a witness holds: verification fails."""


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


_HEX64 = re.compile(r"[0-9a-f]{64}")


def _hex64(value: Any) -> bool:
    return isinstance(value, str) and _HEX64.fullmatch(value) is not None


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**63


def checkpoint_witness_latest() -> Witness | None:
    """The newest checkpoint copy: the first key listed. A copy that is not what its key
    says (another checkpoint, or not one at all) is a failure, not skipped: whoever could add it
    to the bucket must not be able to hide the genuine newest one behind it."""
    if settings.AUDIT_BUCKET:
        client = _s3()
        try:
            listed = client.list_objects_v2(
                Bucket=settings.AUDIT_BUCKET, Prefix=f"{CHECKPOINT_PREFIX}/", MaxKeys=1
            )
            contents = listed.get("Contents") or []
            if not contents:
                return None
            key = str(contents[0]["Key"])
            body = client.get_object(Bucket=settings.AUDIT_BUCKET, Key=key)["Body"].read()
        except Exception as exc:  # botocore's errors, connection and client alike
            raise WitnessUnavailable(
                f"the audit bucket's checkpoints cannot be read: {exc}"
            ) from exc
    else:
        folder = _local_folder()
        names = sorted(os.listdir(folder)) if folder.is_dir() else []
        if not names:
            return None
        key = f"{CHECKPOINT_PREFIX}/{names[0]}"
        body = (folder / names[0]).read_bytes()
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise WitnessInvalid(f"the checkpoint copy {key} is not JSON") from exc
    fields_ok = (
        isinstance(document, dict)
        and _count(document.get("sequence"))
        and _hex64(document.get("hash"))
        and isinstance(document.get("key_id"), str)
        and isinstance(document.get("signature"), str)
        and (document.get("previous") is None or _hex64(document.get("previous")))
        and _moment(document.get("signed_at")) is not None
    )
    if not fields_ok:
        raise WitnessInvalid(f"the checkpoint copy {key} is not a checkpoint")
    if key != checkpoint_key(document["sequence"]):
        raise WitnessInvalid(
            f"the checkpoint copy {key} holds checkpoint {document['sequence']}, which belongs "
            f"under {checkpoint_key(document['sequence'])}"
        )
    return Witness(
        "the audit bucket's last checkpoint",
        document["sequence"],
        document["hash"],
        checkpoint=document,
    )


def _moment(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def _export_witness() -> Witness | None:
    """The newest export digest (by its key, which names its day) and its last event."""
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
            key = max(keys)
            body = client.get_object(Bucket=settings.AUDIT_BUCKET, Key=key)["Body"].read()
        except Exception as exc:
            raise WitnessUnavailable(f"the audit bucket's exports cannot be read: {exc}") from exc
    else:
        root = Path(settings.AUDIT_EXPORT_DIR)
        found = sorted(root.glob(f"*/*/*/*{DIGEST_SUFFIX}")) if root.is_dir() else []
        if not found:
            return None
        key = f"{KEY_PREFIX}/{found[-1].relative_to(root)}"
        body = found[-1].read_bytes()
    try:
        digest = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise WitnessInvalid(f"the export digest {key} is not JSON") from exc
    start = _moment(digest.get("period_start")) if isinstance(digest, dict) else None
    if start is None or not isinstance(digest.get("signature"), str):
        raise WitnessInvalid(f"the export digest {key} is not a digest")
    if key != f"{export_key(start.date())}{DIGEST_SUFFIX}":
        raise WitnessInvalid(f"the export digest {key} is not the digest of the day it names")
    last_sequence, last_hash = digest.get("last_sequence"), digest.get("last_hash")
    if last_sequence is None and last_hash is None:
        # An empty day: the digest pins where the previous one ended.
        last_sequence, last_hash = digest.get("previous_sequence"), digest.get("previous_hash")
    if last_sequence == 0 and last_hash == GENESIS_HASH:
        return None
    if not _count(last_sequence) or not _hex64(last_hash):
        raise WitnessInvalid(f"the export digest {key} names no last event with its hash")
    return Witness("the newest export digest", last_sequence, last_hash, digest=digest)


def _kernel_witness() -> Witness | None:
    try:
        head = get_kernel().audit_head()
    except KernelUnavailable as exc:
        raise WitnessUnavailable(str(exc)) from exc
    if head is None or not head.acknowledged_through:
        return None
    if not _hex64(head.hash):
        raise WitnessInvalid(
            f"the Kernel's audit head names no hash for event {head.acknowledged_through}"
        )
    return Witness("the Kernel's copy", head.acknowledged_through, head.hash)


def witnesses_read() -> tuple[list[Witness], list[tuple[str, str]]]:
    """Every witness that has seen something, and (code, reason) for each that could not be
    read (witness_unavailable) or does not hold what a witness holds (witness_invalid)."""
    found, problems = [], []
    for read in (checkpoint_witness_latest, _export_witness, _kernel_witness):
        try:
            witness = read()
        except WitnessInvalid as exc:
            problems.append(("witness_invalid", str(exc)))
            continue
        except (WitnessUnavailable, OSError) as exc:
            problems.append(("witness_unavailable", f"a witness cannot be read: {exc}"))
            continue
        if witness is not None:
            found.append(witness)
    return found, problems
