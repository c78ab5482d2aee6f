"""Preview material: uploaded, hashed and versioned; the SKU's preview switch.

A new version ends the open sessions of older ones (reason `rotated`: the runbooks' "rotate the
base image"), and a SKU's preview can be switched on only while it has current material.
"""

from __future__ import annotations

import contextlib
import hashlib
import mimetypes
import uuid
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import BinaryIO

from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from audit.services import audit_append
from catalog.cache import catalog_changed
from catalog.models import Sku, SkuStatus
from catalog.services.locks import sku_lock
from marketplace.actors import Actor
from marketplace.models import User
from marketplace.streams import HashingReader, SizeLimitExceeded
from previews.exceptions import InvalidMaterial, PreviewRefused
from previews.locks import preview_pool_lock
from previews.models import EndReason, MaterialKind, PreviewFile, PreviewMaterial, PreviewSession
from previews.selectors import material_current
from previews.services.sessions import sessions_end

COMMAND_MAX_ARGS = 32
COMMAND_ARG_MAX = 500
PATH_MAX = 400
# A zip entry whose unpacked size is this many times its packed size is taken as a bomb.
ZIP_RATIO_MAX = 200
NOTE_MAX = 300


@dataclass(frozen=True)
class Upload:
    """One uploaded file: a plain file, or a zip whose entries become the files."""

    name: str
    content: BinaryIO


def _safe_path(name: str) -> str:
    """A relative POSIX path without `..`, empty or hidden-control parts; InvalidMaterial else."""
    path = PurePosixPath(name.replace("\\", "/"))
    parts = [part for part in path.parts if part not in ("", ".")]
    if (
        path.is_absolute()
        or not parts
        or any(part == ".." for part in parts)
        or any(not part.isprintable() or part.startswith("~") for part in parts)
        or len(name) > PATH_MAX
    ):
        raise InvalidMaterial(
            f"{name!r} is not a file name a preview can hold: use a relative path of at most "
            f"{PATH_MAX} printable characters, without '..'.",
            errors={"files": [f"Unsafe file name: {name!r}."]},
        )
    return "/".join(parts)


def _content_type(path: str) -> str:
    guessed, encoding = mimetypes.guess_type(path, strict=False)
    if guessed is None or encoding is not None:
        return "application/octet-stream"
    if guessed.startswith("text/") or guessed in ("application/javascript", "application/json"):
        return f"{guessed}; charset=utf-8"
    return guessed


class _Budget:
    """What is left of the material's byte and file allowance as files are stored."""

    def __init__(self) -> None:
        self.bytes_left = settings.PREVIEW_MATERIAL_MAX_BYTES
        self.files_left = settings.PREVIEW_MATERIAL_MAX_FILES

    def take_file(self) -> None:
        self.files_left -= 1
        if self.files_left < 0:
            raise InvalidMaterial(
                f"Preview material holds at most {settings.PREVIEW_MATERIAL_MAX_FILES} files "
                "(MARKETPLACE_PREVIEW_MATERIAL_MAX_FILES).",
                errors={"files": ["Too many files."]},
            )

    def too_large(self) -> InvalidMaterial:
        return InvalidMaterial(
            f"Preview material is at most {settings.PREVIEW_MATERIAL_MAX_BYTES} bytes in all, "
            "a zip counted unpacked (MARKETPLACE_PREVIEW_MATERIAL_MAX_BYTES).",
            errors={"files": ["The files are too large."]},
        )


@dataclass(frozen=True)
class _Stored:
    path: str
    storage_key: str
    content_type: str
    size: int
    sha256: str


def _store(prefix: str, path: str, content: BinaryIO, budget: _Budget) -> _Stored:
    budget.take_file()
    reader = HashingReader(content, max_bytes=budget.bytes_left)
    key = f"{prefix}/{path}"
    try:
        key = default_storage.save(key, File(reader, name=PurePosixPath(path).name))
    except SizeLimitExceeded:
        _discard([key])
        raise budget.too_large() from None
    budget.bytes_left -= reader.size
    return _Stored(path, key, _content_type(path), reader.size, reader.sha256)


def _zip_entries(upload: Upload) -> Iterable[tuple[str, BinaryIO]]:
    try:
        archive = zipfile.ZipFile(upload.content)
    except zipfile.BadZipFile:
        raise InvalidMaterial(
            f"{upload.name} is not a readable zip archive.",
            errors={"files": [f"{upload.name} is not a readable zip archive."]},
        ) from None
    with archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            if info.flag_bits & 0x1:
                raise InvalidMaterial(
                    f"{info.filename} in {upload.name} is encrypted; upload it unencrypted.",
                    errors={"files": ["Encrypted zip entries are not accepted."]},
                )
            if info.compress_size and info.file_size / info.compress_size > ZIP_RATIO_MAX:
                raise InvalidMaterial(
                    f"{info.filename} in {upload.name} unpacks to more than {ZIP_RATIO_MAX} "
                    "times its packed size; it is refused as a zip bomb.",
                    errors={"files": ["A zip entry is compressed beyond belief."]},
                )
            with archive.open(info) as entry:
                # The unpacked bytes are counted as they are read (HashingReader), whatever the
                # entry's header claims.
                yield info.filename, entry


def _discard(keys: Iterable[str]) -> None:
    for key in keys:
        with contextlib.suppress(OSError, BotoCoreError, ClientError):
            default_storage.delete(key)


def _material_digest(stored: Sequence[_Stored]) -> str:
    listing = "".join(
        f"{item.sha256}  {item.path}\n" for item in sorted(stored, key=lambda s: s.path)
    )
    return hashlib.sha256(listing.encode()).hexdigest()


def _command(kind: str, command: Sequence[str] | None) -> list[str]:
    command = [arg for arg in (command or [])]
    if kind == MaterialKind.SAMPLE:
        if command:
            raise InvalidMaterial(
                "A sample has no command; choose the sandbox kind to serve it with one.",
                errors={"command": ["A sample has no command."]},
            )
        return []
    problem = None
    if not command:
        problem = "A sandbox needs the command that serves its files over HTTP."
    elif len(command) > COMMAND_MAX_ARGS:
        problem = f"The command takes at most {COMMAND_MAX_ARGS} arguments."
    elif any(not isinstance(arg, str) or not arg or len(arg) > COMMAND_ARG_MAX for arg in command):
        problem = f"Each argument is 1 to {COMMAND_ARG_MAX} characters."
    elif any("\0" in arg or not arg.isprintable() for arg in command):
        problem = "The command's arguments are printable characters only."
    if problem:
        raise InvalidMaterial(problem, errors={"command": [problem]})
    return command


def preview_material_add(
    *,
    sku_id: int,
    kind: str,
    uploads: Sequence[Upload],
    command: Sequence[str] | None = None,
    entry: str = "",
    note: str = "",
    actor: Actor,
    created_by: User | None = None,
) -> PreviewMaterial:
    """Stores the uploads (a zip's entries as its files, paths kept) and makes them the SKU's
    next preview material version. Open sessions of older versions end (`rotated`).

    Raises InvalidMaterial naming the field (`files`, `command`, `entry`, `kind`), with nothing
    left in storage. Records `preview.material_added`, then `preview.ended` per ended session.
    """
    if kind not in MaterialKind.values:
        raise InvalidMaterial(
            f"{kind!r} is not a kind of preview material ({', '.join(MaterialKind.values)}).",
            errors={"kind": ["Choose sample or sandbox."]},
        )
    command_args = _command(kind, command)
    note = note.strip()[:NOTE_MAX]
    if not uploads:
        raise InvalidMaterial(
            "Upload at least one file (or a zip of them).",
            errors={"files": ["Upload at least one file."]},
        )
    sku = Sku.objects.get(pk=sku_id)
    if sku.status == SkuStatus.RETIRED:
        raise PreviewRefused(f"{sku.slug} is retired: its preview can no longer change.")
    prefix = f"previews/{uuid.uuid4().hex}"
    budget = _Budget()
    stored: list[_Stored] = []
    try:
        for upload in uploads:
            if upload.name.lower().endswith(".zip"):
                for name, content in _zip_entries(upload):
                    stored.append(_store(prefix, _safe_path(name), content, budget))
            else:
                name = PurePosixPath(upload.name.replace("\\", "/")).name
                stored.append(_store(prefix, _safe_path(name), upload.content, budget))
        paths = [item.path for item in stored]
        duplicates = sorted({path for path in paths if paths.count(path) > 1})
        if duplicates:
            raise InvalidMaterial(
                f"Two files have the same path: {', '.join(duplicates)}.",
                errors={"files": [f"Duplicate paths: {', '.join(duplicates)}."]},
            )
        entry = entry.strip()
        if not entry and kind == MaterialKind.SAMPLE and "index.html" in paths:
            entry = "index.html"
        if entry and entry not in paths:
            raise InvalidMaterial(
                f"The entry {entry!r} is not one of the files.",
                errors={"entry": [f"{entry!r} is not one of the uploaded files."]},
            )
        if not stored:
            raise InvalidMaterial(
                "The upload holds no files.", errors={"files": ["The zip holds no files."]}
            )
        return _material_record(
            sku_id=sku_id,
            kind=kind,
            stored=stored,
            command=command_args,
            entry=entry,
            note=note,
            actor=actor,
            created_by=created_by,
        )
    except BaseException:
        _discard(item.storage_key for item in stored)
        raise


@transaction.atomic
def _material_record(
    *,
    sku_id: int,
    kind: str,
    stored: Sequence[_Stored],
    command: list[str],
    entry: str,
    note: str,
    actor: Actor,
    created_by: User | None,
) -> PreviewMaterial:
    sku = sku_lock(sku_id)
    if sku.status == SkuStatus.RETIRED:
        raise PreviewRefused(f"{sku.slug} is retired: its preview can no longer change.")
    latest = PreviewMaterial.objects.filter(sku=sku).aggregate(v=Max("version"))["v"] or 0
    material = PreviewMaterial.objects.create(
        sku=sku,
        version=latest + 1,
        kind=kind,
        command=command,
        entry=entry,
        digest=_material_digest(stored),
        size=sum(item.size for item in stored),
        file_count=len(stored),
        note=note,
        created_by=created_by,
    )
    PreviewFile.objects.bulk_create(
        PreviewFile(
            material=material,
            path=item.path,
            storage_key=item.storage_key,
            content_type=item.content_type,
            size=item.size,
            sha256=item.sha256,
        )
        for item in stored
    )
    audit_append(
        actor=actor,
        action="preview.material_added",
        subject=sku,
        data={
            "material": str(material.uuid),
            "version": material.version,
            "kind": kind,
            "digest": material.digest,
            "files": material.file_count,
            "size": material.size,
            "command": command,
            "entry": entry,
        },
    )
    preview_pool_lock()
    older = PreviewSession.objects.open().filter(sku=sku, material__version__lt=material.version)
    sessions_end(
        sessions=older,
        reason=EndReason.ROTATED,
        detail=f"preview material v{material.version} replaced the version it ran",
        actor=actor,
    )
    return material


@transaction.atomic
def preview_material_withdraw(*, material_id: int, reason: str, actor: Actor) -> PreviewMaterial:
    """Withdraws one material version: its open sessions end (`revoked`), and a SKU left without
    current material has its preview switched off. Records `preview.material_withdrawn`."""
    reason = reason.strip()
    if not reason:
        raise InvalidMaterial(
            "Say why the material is withdrawn.", errors={"reason": ["Required."]}
        )
    sku_id = PreviewMaterial.objects.values_list("sku_id", flat=True).get(pk=material_id)
    sku = sku_lock(sku_id)
    material = PreviewMaterial.objects.select_for_update().get(pk=material_id)
    if material.withdrawn_at is not None:
        return material
    material.withdrawn_at = timezone.now()
    material.save(update_fields=["withdrawn_at"])
    audit_append(
        actor=actor,
        action="preview.material_withdrawn",
        subject=sku,
        data={"material": str(material.uuid), "version": material.version, "reason": reason[:300]},
    )
    preview_pool_lock()
    sessions_end(
        sessions=PreviewSession.objects.open().filter(material=material),
        reason=EndReason.REVOKED,
        detail=f"preview material v{material.version} was withdrawn: {reason}"[:500],
        actor=actor,
    )
    if sku.preview_enabled and material_current(sku) is None:
        _preview_switch(sku, enabled=False, actor=actor, why="its last material was withdrawn")
    return material


def preview_blockers(sku: Sku) -> list[str]:
    """Why the SKU's preview cannot be switched on (empty: it can)."""
    reasons = []
    if sku.status == SkuStatus.RETIRED:
        reasons.append(f"{sku.slug} is retired")
    if material_current(sku) is None:
        reasons.append("it has no preview material: upload a sample or a sandbox first")
    return reasons


@transaction.atomic
def sku_preview_set(*, sku_id: int, enabled: bool, actor: Actor) -> Sku:
    """Switches a SKU's preview on (only with current material) or off (its open sessions end,
    `revoked`). Records `sku.preview_enabled` or `sku.preview_disabled`; nothing if unchanged."""
    sku = sku_lock(sku_id)
    if sku.preview_enabled == enabled:
        return sku
    if enabled and (reasons := preview_blockers(sku)):
        raise PreviewRefused(
            f"The preview of {sku.slug} cannot be switched on: " + "; ".join(reasons) + ".",
            extra={"reasons": reasons},
        )
    _preview_switch(sku, enabled=enabled, actor=actor, why="")
    return sku


def _preview_switch(sku: Sku, *, enabled: bool, actor: Actor, why: str) -> None:
    """Caller holds the SKU's lock."""
    sku.preview_enabled = enabled
    sku.save(update_fields=["preview_enabled", "updated_at"])
    current = material_current(sku)
    audit_append(
        actor=actor,
        action="sku.preview_enabled" if enabled else "sku.preview_disabled",
        subject=sku,
        data={"material_version": current.version if current else None, "why": why},
    )
    if not enabled:
        preview_pool_lock()
        sessions_end(
            sessions=PreviewSession.objects.open().filter(sku=sku),
            reason=EndReason.REVOKED,
            detail=f"the preview of {sku.slug} was switched off" + (f" ({why})" if why else ""),
            actor=actor,
        )
    catalog_changed(sku)
