"""Writes to the catalog. The admin, the API, the tasks and the commands all come through here.

Every write retires the cached catalog reads once it commits (catalog.cache.catalog_changed).
Calls to storage and to the Kernel happen outside database transactions, so a slow upload or
an unreachable Kernel never holds a row lock.
"""

import base64
import contextlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, BinaryIO

from botocore.exceptions import BotoCoreError, ClientError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from django.conf import settings
from django.core.exceptions import SuspiciousFileOperation, ValidationError
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.db.models import ProtectedError
from django.utils import timezone
from django.utils.text import get_valid_filename

from catalog.cache import catalog_changed
from catalog.exceptions import (
    ArtifactTooLarge,
    ArtifactUploadFailed,
    InvalidCategory,
    InvalidManifest,
    InvalidPartnerKey,
    InvalidSplits,
    SkuLocked,
    TransitionRefused,
)
from catalog.manifests import manifest_parse
from catalog.models import (
    BASIS_POINTS_TOTAL,
    Artifact,
    Category,
    KeyStatus,
    ManifestStatus,
    Partner,
    PartnerKey,
    RoyaltySplit,
    Sku,
    SkuStatus,
)
from catalog.selectors import sku_activation_blockers
from marketplace.kernel import KernelUnavailable, PublisherKey, decode_signature, get_kernel
from marketplace.models import User
from marketplace.streams import HashingReader, SizeLimitExceeded

CATEGORY_MAX_DEPTH = 8


def _sku_lock(sku_id: int) -> Sku:
    """Locks one SKU row for the rest of the transaction and returns its current state."""
    return (
        Sku.objects.select_for_update(of=("self",))
        .select_related("partner", "artifact")
        .get(pk=sku_id)
    )


# --- Partners ----------------------------------------------------------------------------------


@transaction.atomic
def partner_save(*, partner: Partner) -> Partner:
    partner.full_clean()
    partner.save()
    catalog_changed()
    return partner


def public_key_parse(text: str) -> bytes:
    """Returns the raw Ed25519 public key from base64 (32 bytes) or a PEM SubjectPublicKeyInfo."""
    text = text.strip()
    if text.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(text.encode())
        except ValueError as exc:
            raise InvalidPartnerKey(f"The PEM public key cannot be read: {exc}.") from None
        if not isinstance(key, Ed25519PublicKey):
            raise InvalidPartnerKey("The PEM key is not an Ed25519 public key.")
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    try:
        raw = decode_signature(text)
    except ValueError:
        raise InvalidPartnerKey("The public key is neither base64 nor PEM.") from None
    if len(raw) != 32:
        raise InvalidPartnerKey(f"An Ed25519 public key is 32 bytes; this one is {len(raw)}.")
    try:
        Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise InvalidPartnerKey(f"The public key is not a valid Ed25519 key: {exc}.") from None
    return raw


@transaction.atomic
def partner_key_register(*, partner: Partner, key_id: str, public_key: str) -> PartnerKey:
    raw = public_key_parse(public_key)
    key = PartnerKey(
        partner=partner,
        key_id=key_id,
        public_key=base64.b64encode(raw).decode(),
        fingerprint=PartnerKey.fingerprint_of(raw),
    )
    try:
        key.full_clean()
    except ValidationError as exc:
        raise InvalidPartnerKey(
            "The key cannot be registered: " + "; ".join(exc.messages),
            errors={field: list(messages) for field, messages in exc.message_dict.items()},
        ) from None
    try:
        with transaction.atomic():
            key.save()
    except IntegrityError:
        # A concurrent registration of the same key or key id won the race.
        raise InvalidPartnerKey("This key or key id is already registered.") from None
    return key


@transaction.atomic
def partner_key_revoke(*, key_pk: int, reason: str) -> PartnerKey:
    """Revokes a key. Manifests it verified no longer count: their SKUs leave sale."""
    key = PartnerKey.objects.select_for_update().select_related("partner").get(pk=key_pk)
    if key.status == KeyStatus.REVOKED:
        return key
    now = timezone.now()
    key.status = KeyStatus.REVOKED
    key.revoked_at = now
    key.revoked_reason = reason
    key.save(update_fields=["status", "revoked_at", "revoked_reason"])

    affected = (
        Sku.objects.select_for_update(of=("self",))
        .filter(
            partner=key.partner, manifest_key_id=key.key_id, manifest_status=ManifestStatus.VERIFIED
        )
        .order_by("pk")
    )
    for sku in affected:
        sku.manifest_status = ManifestStatus.REJECTED
        sku.manifest_detail = f"signed with key {key.key_id!r}, revoked: {reason or 'no reason'}"
        fields = ["manifest_status", "manifest_detail", "updated_at"]
        if sku.status == SkuStatus.ACTIVE:
            sku.status = SkuStatus.SUSPENDED
            sku.status_reason = f"manifest signing key {key.key_id!r} was revoked"
            sku.status_changed_at = now
            fields += ["status", "status_reason", "status_changed_at"]
        sku.save(update_fields=fields)
    catalog_changed()
    return key


# --- Categories --------------------------------------------------------------------------------


def category_parent_problem(*, category: Category, parent: Category | None) -> str | None:
    """Why `parent` cannot hold `category`, or None: no cycles, at most 8 levels."""
    depth = 1
    ancestor = parent
    while ancestor is not None:
        if category.pk is not None and ancestor.pk == category.pk:
            return "A category cannot be placed under itself or one of its own subcategories."
        depth += 1
        if depth > CATEGORY_MAX_DEPTH:
            return f"Categories nest at most {CATEGORY_MAX_DEPTH} levels deep."
        ancestor = ancestor.parent
    return None


@transaction.atomic
def category_save(*, category: Category) -> Category:
    """Saves a category and keeps the materialised paths of it and its subtree right."""
    problem = category_parent_problem(category=category, parent=category.parent)
    if problem:
        raise InvalidCategory(problem, errors={"parent": [problem]})

    old_path = (
        Category.objects.filter(pk=category.pk).values_list("path", flat=True).first()
        if category.pk
        else None
    )
    category.path = (category.parent.path if category.parent else "") + category.slug + "/"
    category.full_clean()
    category.save()

    if old_path and old_path != category.path:
        subtree = list(
            Category.objects.filter(path__startswith=old_path)
            .exclude(pk=category.pk)
            .order_by("path")
        )
        for node in subtree:
            node.path = category.path + node.path[len(old_path) :]
        Category.objects.bulk_update(subtree, ["path"])
    catalog_changed()
    return category


@transaction.atomic
def category_delete(*, category: Category) -> None:
    try:
        category.delete()
    except ProtectedError:
        raise InvalidCategory(
            f"{category} still has subcategories or SKUs; move them first."
        ) from None
    catalog_changed()


# --- SKUs --------------------------------------------------------------------------------------

# Fields only their own services change; a plain save keeps what the database holds.
_SERVICE_OWNED_FIELDS = (
    "status",
    "status_reason",
    "status_changed_at",
    "activated_at",
    "artifact_id",
    "manifest",
    "manifest_signature",
    "manifest_status",
    "manifest_detail",
    "manifest_key_id",
    "manifest_checked_at",
)


@transaction.atomic
def sku_save(*, sku: Sku) -> Sku:
    """Creates a SKU as a draft, or saves changes to its descriptive fields and price.

    What identifies the goods on sale (partner, version) cannot change while the SKU is active,
    and the slug cannot change once the SKU has ever been on sale: orders refer to it.
    """
    if sku.pk is None:
        sku.status = SkuStatus.DRAFT
        sku.artifact = None
        sku.manifest = None
        sku.manifest_signature = ""
        sku.manifest_status = ManifestStatus.MISSING
    else:
        before = _sku_lock(sku.pk)
        if before.status == SkuStatus.RETIRED:
            raise SkuLocked(f"{before.slug} is retired and can no longer be changed.")
        if before.status == SkuStatus.ACTIVE:
            for field in ("partner_id", "version"):
                if getattr(sku, field) != getattr(before, field):
                    raise SkuLocked(
                        f"The {field.removesuffix('_id')} of {before.slug} cannot change while "
                        "it is on sale; suspend it first."
                    )
        if before.activated_at is not None and sku.slug != before.slug:
            raise SkuLocked(f"{before.slug} has been on sale, so its slug can no longer change.")
        for field in _SERVICE_OWNED_FIELDS:
            setattr(sku, field, getattr(before, field))
    sku.full_clean()
    sku.save()
    catalog_changed()
    return sku


@dataclass(frozen=True)
class StoredArtifact:
    storage_key: str
    filename: str
    content_type: str
    size: int
    sha256: str


def _safe_filename(filename: str) -> str:
    try:
        return get_valid_filename(filename.rsplit("/", 1)[-1].rsplit("\\", 1)[-1])[:200]
    except SuspiciousFileOperation:
        return "artifact.bin"


def _discard(storage_key: str) -> None:
    # A failed upload may have left part of the file behind under its key.
    with contextlib.suppress(OSError, BotoCoreError, ClientError):
        default_storage.delete(storage_key)


def artifact_store(*, content: BinaryIO, filename: str, content_type: str = "") -> StoredArtifact:
    """Streams a file to storage under a fresh key, computing its SHA-256 and size on the way.

    Nothing is written to the database. On any failure, nothing is left under the key.
    """
    safe_name = _safe_filename(filename)
    storage_key = f"artifacts/{uuid.uuid4().hex}/{safe_name}"
    reader = HashingReader(content, max_bytes=settings.ARTIFACT_MAX_BYTES)
    try:
        storage_key = default_storage.save(storage_key, File(reader, name=safe_name))
    except SizeLimitExceeded:
        _discard(storage_key)
        raise ArtifactTooLarge(
            f"The artifact is larger than the {settings.ARTIFACT_MAX_BYTES} bytes allowed "
            "(MARKETPLACE_ARTIFACT_MAX_BYTES)."
        ) from None
    except (OSError, BotoCoreError, ClientError) as exc:
        _discard(storage_key)
        raise ArtifactUploadFailed(
            f"The upload of {safe_name} failed after {reader.size} bytes: {exc}. "
            "Nothing was kept; upload it again."
        ) from exc
    except BaseException:
        _discard(storage_key)
        raise
    if reader.size == 0:
        _discard(storage_key)
        raise ArtifactUploadFailed("The artifact is empty.")
    return StoredArtifact(
        storage_key=storage_key,
        filename=safe_name,
        content_type=content_type or "application/octet-stream",
        size=reader.size,
        sha256=reader.sha256,
    )


def _check_artifact_changeable(sku: Sku) -> None:
    if sku.status not in (SkuStatus.DRAFT, SkuStatus.SUSPENDED):
        raise SkuLocked(
            f"{sku.slug} is {sku.status}: its artifact can only change while it is a draft "
            "or suspended."
        )


@transaction.atomic
def sku_artifact_attach(
    *, sku_id: int, stored: StoredArtifact, uploaded_by: User | None = None
) -> Artifact:
    """Makes a stored file the SKU's artifact. The manifest must then name its hash."""
    sku = _sku_lock(sku_id)
    _check_artifact_changeable(sku)
    artifact = Artifact.objects.create(
        sku=sku,
        storage_key=stored.storage_key,
        filename=stored.filename,
        content_type=stored.content_type,
        size=stored.size,
        sha256=stored.sha256,
        uploaded_by=uploaded_by,
    )
    sku.artifact = artifact
    sku.save(update_fields=["artifact", "updated_at"])
    catalog_changed()
    return artifact


def sku_artifact_upload(
    *,
    sku: Sku,
    content: BinaryIO,
    filename: str,
    content_type: str = "",
    uploaded_by: User | None = None,
) -> Artifact:
    """Stores a file and attaches it to the SKU; if attaching fails, the file is removed."""
    _check_artifact_changeable(sku)
    stored = artifact_store(content=content, filename=filename, content_type=content_type)
    try:
        return sku_artifact_attach(sku_id=sku.pk, stored=stored, uploaded_by=uploaded_by)
    except BaseException:
        _discard(stored.storage_key)
        raise


def _stored_artifact_keys() -> list[str]:
    try:
        folders, _ = default_storage.listdir("artifacts")
    except FileNotFoundError:
        return []
    return [
        f"artifacts/{folder}/{name}"
        for folder in folders
        for name in default_storage.listdir(f"artifacts/{folder}")[1]
    ]


def artifact_orphans_delete(*, older_than: datetime) -> list[str]:
    """Deletes stored artifact files that no artifact refers to and that are older than
    `older_than`: uploads whose admin form was sent back with errors, or whose transaction
    rolled back. Younger files are spared, as their upload may be about to be attached."""
    referenced = set(Artifact.objects.values_list("storage_key", flat=True))
    removed: list[str] = []
    for key in _stored_artifact_keys():
        if key in referenced or default_storage.get_modified_time(key) > older_than:
            continue
        default_storage.delete(key)
        removed.append(key)
    return removed


def manifest_signature_parse(signature: str) -> str:
    signature = "".join(signature.split())
    if not signature:
        raise InvalidManifest(
            "The manifest's signature is missing.", errors={"manifest_signature": ["Required."]}
        )
    try:
        decode_signature(signature)
    except ValueError:
        raise InvalidManifest(
            "The manifest's signature is not base64.",
            errors={"manifest_signature": ["Not base64."]},
        ) from None
    return signature


@transaction.atomic
def sku_manifest_attach(*, sku_id: int, manifest: str | dict[str, Any], signature: str) -> Sku:
    """Attaches a manifest and its signature; a worker then verifies them."""
    manifest = manifest_parse(manifest)
    signature = manifest_signature_parse(signature)
    sku = _sku_lock(sku_id)
    if sku.status not in (SkuStatus.DRAFT, SkuStatus.SUSPENDED):
        raise SkuLocked(
            f"{sku.slug} is {sku.status}: its manifest can only change while it is a draft "
            "or suspended."
        )
    sku.manifest = manifest
    sku.manifest_signature = signature
    sku.manifest_status = ManifestStatus.PENDING
    sku.manifest_detail = ""
    sku.manifest_key_id = ""
    sku.manifest_checked_at = None
    sku.save(
        update_fields=[
            "manifest",
            "manifest_signature",
            "manifest_status",
            "manifest_detail",
            "manifest_key_id",
            "manifest_checked_at",
            "updated_at",
        ]
    )
    catalog_changed()

    from catalog.tasks import sku_verify_manifest

    transaction.on_commit(lambda: sku_verify_manifest.delay(sku.pk))
    return sku


@dataclass(frozen=True)
class ManifestCheck:
    status: str
    detail: str


def sku_manifest_verify(*, sku_id: int) -> ManifestCheck | None:
    """Asks the Kernel whether the SKU's manifest signature is good and records the answer.

    Returns None when there is no manifest, or when it changed while the Kernel was asked
    (the newer manifest gets its own check). An unreachable Kernel is recorded as such for a
    SKU that is not on sale; an active SKU keeps its earlier verdict through an outage.
    """
    sku = Sku.objects.select_related("partner").get(pk=sku_id)
    if sku.manifest is None:
        return None
    asked_about = (sku.manifest, sku.manifest_signature)
    keys = [
        PublisherKey(key_id=key.key_id, public_key=key.raw_public_key())
        for key in sku.partner.keys.active()
    ]
    key_id = ""
    try:
        verdict = get_kernel().verify_manifest(
            publisher=sku.partner.slug,
            publisher_keys=keys,
            manifest=sku.manifest,
            signature=sku.manifest_signature,
        )
    except KernelUnavailable as exc:
        check = ManifestCheck(ManifestStatus.UNAVAILABLE, str(exc))
    else:
        status = ManifestStatus.VERIFIED if verdict.verified else ManifestStatus.REJECTED
        check = ManifestCheck(status, verdict.reason)
        key_id = verdict.key_id

    with transaction.atomic():
        sku = _sku_lock(sku_id)
        if (sku.manifest, sku.manifest_signature) != asked_about:
            return None
        now = timezone.now()
        if sku.status == SkuStatus.ACTIVE and check.status == ManifestStatus.UNAVAILABLE:
            return check
        sku.manifest_status = check.status
        sku.manifest_detail = check.detail
        sku.manifest_key_id = key_id
        sku.manifest_checked_at = now
        fields = [
            "manifest_status",
            "manifest_detail",
            "manifest_key_id",
            "manifest_checked_at",
            "updated_at",
        ]
        if sku.status == SkuStatus.ACTIVE and check.status == ManifestStatus.REJECTED:
            sku.status = SkuStatus.SUSPENDED
            sku.status_reason = f"manifest rejected on re-verification: {check.detail}"[:300]
            sku.status_changed_at = now
            fields += ["status", "status_reason", "status_changed_at"]
        sku.save(update_fields=fields)
        catalog_changed()
    return check


def sku_activate(*, sku_id: int) -> Sku:
    """Puts a draft or suspended SKU on sale, after a fresh check of its manifest.

    Raises TransitionRefused listing every unmet condition.
    """
    sku = Sku.objects.get(pk=sku_id)
    if not sku.can_become(SkuStatus.ACTIVE):
        raise TransitionRefused(
            slug=sku.slug,
            target=SkuStatus.ACTIVE,
            reasons=[f"a {sku.status} SKU cannot be activated"],
        )
    if sku.manifest is not None:
        sku_manifest_verify(sku_id=sku_id)

    with transaction.atomic():
        sku = _sku_lock(sku_id)
        reasons = sku_activation_blockers(sku)
        if reasons:
            raise TransitionRefused(slug=sku.slug, target=SkuStatus.ACTIVE, reasons=reasons)
        now = timezone.now()
        sku.status = SkuStatus.ACTIVE
        sku.status_reason = ""
        sku.status_changed_at = now
        sku.activated_at = sku.activated_at or now
        sku.save(
            update_fields=[
                "status",
                "status_reason",
                "status_changed_at",
                "activated_at",
                "updated_at",
            ]
        )
        catalog_changed()
    return sku


def _sku_transition(*, sku_id: int, target: str, reason: str, refusal: str) -> Sku:
    sku = _sku_lock(sku_id)
    if not sku.can_become(target):
        raise TransitionRefused(
            slug=sku.slug, target=target, reasons=[refusal.format(status=sku.status)]
        )
    sku.status = target
    sku.status_reason = reason[:300]
    sku.status_changed_at = timezone.now()
    sku.save(update_fields=["status", "status_reason", "status_changed_at", "updated_at"])
    catalog_changed()
    return sku


@transaction.atomic
def sku_suspend(*, sku_id: int, reason: str = "") -> Sku:
    """Takes an active SKU off sale; it can be activated again."""
    return _sku_transition(
        sku_id=sku_id,
        target=SkuStatus.SUSPENDED,
        reason=reason,
        refusal="only an active SKU can be suspended; this one is {status}",
    )


@transaction.atomic
def sku_retire(*, sku_id: int, reason: str = "") -> Sku:
    """Takes a SKU off sale for good."""
    return _sku_transition(
        sku_id=sku_id,
        target=SkuStatus.RETIRED,
        reason=reason,
        refusal="this SKU is already {status}",
    )


def splits_problems(splits: Sequence[tuple[Partner, int]]) -> list[str]:
    problems: list[str] = []
    seen: set[int] = set()
    for partner, basis_points in splits:
        if not 1 <= basis_points <= BASIS_POINTS_TOTAL:
            problems.append(
                f"{partner.slug} has {basis_points} basis points; each share is 1 to 10,000"
            )
        if partner.pk in seen:
            problems.append(f"{partner.slug} appears more than once")
        seen.add(partner.pk)
    total = sum(basis_points for _, basis_points in splits)
    if splits and total != BASIS_POINTS_TOTAL:
        problems.append(f"the shares sum to {total:,} basis points, not 10,000")
    return problems


@transaction.atomic
def sku_splits_set(*, sku_id: int, splits: Sequence[tuple[Partner, int]]) -> list[RoyaltySplit]:
    """Replaces the SKU's royalty splits as a whole.

    The shares must sum to exactly 10,000 basis points; only a SKU that is not on sale may be
    left without splits.
    """
    sku = _sku_lock(sku_id)
    if sku.status == SkuStatus.RETIRED:
        raise SkuLocked(f"{sku.slug} is retired; its splits can no longer change.")
    problems = splits_problems(splits)
    if not splits and sku.status == SkuStatus.ACTIVE:
        problems.append("a SKU on sale must have royalty splits")
    if problems:
        raise InvalidSplits(
            "The royalty splits were not changed: " + "; ".join(problems) + ".",
            errors={"splits": problems},
        )
    RoyaltySplit.objects.filter(sku=sku).delete()
    created = RoyaltySplit.objects.bulk_create(
        RoyaltySplit(sku=sku, partner=partner, basis_points=basis_points)
        for partner, basis_points in splits
    )
    catalog_changed()
    return created
