"""SKUs: their fields, manifests, status and royalty splits."""

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.services import audit_append
from catalog.cache import catalog_changed
from catalog.exceptions import (
    InvalidManifest,
    InvalidSku,
    InvalidSplits,
    SkuLocked,
    TransitionRefused,
)
from catalog.manifests import manifest_parse
from catalog.models import (
    BASIS_POINTS_TOTAL,
    ManifestStatus,
    Partner,
    RoyaltySplit,
    Sku,
    SkuStatus,
)
from catalog.moderation.backends import ModerationUnavailable
from catalog.moderation.items import LISTING_FIELDS
from catalog.selectors import sku_activation_blockers, sku_unmoderated_items
from catalog.services.changes import NOTE_MAX, changes, recorded, sku_fields, splits_record
from catalog.services.locks import sku_lock
from catalog.services.moderation import sku_moderate, sku_moderation_enqueue
from catalog.services.status import sku_status_change
from catalog.services.verdicts import (
    signed_manifest_detail,
    signed_manifest_record,
    signed_manifest_status,
)
from marketplace.actors import Actor
from marketplace.canonical import canonical_json
from marketplace.kernel import KernelUnavailable, PublisherKey, decode_signature, get_kernel
from marketplace.validation import full_clean

# --- SKUs --------------------------------------------------------------------------------------

# Fields only their own services change; a plain save keeps what the database holds.
_SERVICE_OWNED_FIELDS = (
    # Switched on only with preview material (previews.services.sku_preview_set).
    "preview_enabled",
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


# The fields of the listing moderation judges (catalog.moderation.items).
MODERATED_FIELDS = (*LISTING_FIELDS, "version")

# Fields that cannot change while the SKU is on sale: they identify the goods sold.
_FIXED_WHILE_ON_SALE = ("partner", "version")


def sku_fixed_fields(sku: Sku) -> frozenset[str]:
    """The fields of a stored SKU that sku_save will not change: every field of a retired SKU;
    partner and version while it is on sale; the slug once it has ever been (orders refer to
    it). Nothing for a SKU not saved yet."""
    if sku.pk is None:
        return frozenset()
    if sku.status == SkuStatus.RETIRED:
        return frozenset(field.name for field in Sku._meta.concrete_fields if field.editable)
    fixed = set(_FIXED_WHILE_ON_SALE) if sku.status == SkuStatus.ACTIVE else set()
    if sku.activated_at is not None:
        fixed.add("slug")
    return frozenset(fixed)


def _sku_ready(sku: Sku, before: Sku | None) -> None:
    """Readies `sku` to be saved over its stored row `before` (None for a new SKU): what only
    other services change is taken from `before`. Raises SkuLocked for a change its status
    does not allow and InvalidSku for a field breaking a rule of the model, each naming the
    fields."""
    if before is None:
        sku.status = SkuStatus.DRAFT
        sku.preview_enabled = False
        sku.artifact = None
        sku.manifest = None
        sku.manifest_signature = ""
        sku.manifest_status = ManifestStatus.MISSING
    else:
        if before.status == SkuStatus.RETIRED:
            raise SkuLocked(f"{before.slug} is retired and can no longer be changed.")
        problems: dict[str, list[str]] = {}
        fixed = sku_fixed_fields(before)
        for field in _FIXED_WHILE_ON_SALE:
            attname = Sku._meta.get_field(field).attname
            if field in fixed and getattr(sku, attname) != getattr(before, attname):
                problems[field] = [
                    f"The {field} of {before.slug} cannot change while it is on sale; "
                    "suspend it first."
                ]
        if "slug" in fixed and sku.slug != before.slug:
            problems["slug"] = [
                f"{before.slug} has been on sale, so its slug can no longer change."
            ]
        if problems:
            raise SkuLocked(
                " ".join(message for messages in problems.values() for message in messages),
                errors=problems,
            )
        for field in _SERVICE_OWNED_FIELDS:
            setattr(sku, field, getattr(before, field))
    try:
        full_clean(sku)
    except ValidationError as exc:
        raise InvalidSku(
            "The SKU was not saved: " + " ".join(exc.messages), errors=exc.message_dict
        ) from None


def sku_check(*, sku: Sku) -> None:
    """Raises what sku_save would refuse for `sku` as it stands (SkuLocked, InvalidSku, with
    the fields' errors), without writing, so a form can show it at its fields. sku_save checks
    again under the SKU's lock."""
    before = (
        Sku.objects.select_related("partner", "artifact").get(pk=sku.pk)
        if sku.pk is not None
        else None
    )
    _sku_ready(sku, before)


@transaction.atomic
def sku_save(*, sku: Sku, actor: Actor) -> Sku:
    """Creates a SKU as a draft, or saves changes to its descriptive fields and price.

    What identifies the goods on sale (partner, version) cannot change while the SKU is active,
    and the slug cannot change once the SKU has ever been on sale: orders refer to it
    (sku_fixed_fields). Raises SkuLocked or InvalidSku naming the fields (see sku_check).
    Records `sku.created`, or `sku.updated` with the fields that changed (nothing if none did).
    """
    before = sku_lock(sku.pk) if sku.pk is not None else None
    _sku_ready(sku, before)
    try:
        with transaction.atomic():
            sku.save()
    except IntegrityError:
        # A concurrent save took the slug since the check: refuse it at its field as the check
        # does, or let the database's refusal stand if the check finds nothing.
        _sku_ready(sku, before)
        raise
    after = sku_fields(sku)
    if before is None:
        audit_append(actor=actor, action="sku.created", subject=sku, data=recorded(after))
    elif change := changes(sku_fields(before), after):
        audit_append(actor=actor, action="sku.updated", subject=sku, data=change)
    if before is None or (change and set(change["changed"]) & set(MODERATED_FIELDS)):
        sku_moderation_enqueue(sku_id=sku.pk, actor=actor)
    catalog_changed(before, sku)
    return sku


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


def manifest_check(*, manifest: str | dict[str, Any], signature: str) -> tuple[dict[str, Any], str]:
    """The manifest and signature as sku_manifest_attach takes them. Raises InvalidManifest
    with the problem of each (`errors` keyed `manifest` and `manifest_signature`)."""
    errors: dict[str, list[str]] = {}
    parsed: dict[str, Any] = {}
    if isinstance(manifest, str) and not manifest.strip():
        errors["manifest"] = ["The manifest is missing: paste the one the signature was made over."]
    else:
        try:
            parsed = manifest_parse(manifest)
        except InvalidManifest as exc:
            errors["manifest"] = [exc.detail]
    try:
        signature = manifest_signature_parse(signature)
    except InvalidManifest as exc:
        errors["manifest_signature"] = [exc.detail]
    if errors:
        raise InvalidManifest(
            " ".join(message for messages in errors.values() for message in messages),
            errors=errors,
        )
    return parsed, signature


@transaction.atomic
def sku_manifest_attach(
    *, sku_id: int, manifest: str | dict[str, Any], signature: str, actor: Actor
) -> Sku:
    """Attaches a manifest and its signature; a worker then verifies them. Records
    `sku.manifest_attached`."""
    manifest, signature = manifest_check(manifest=manifest, signature=signature)
    sku = sku_lock(sku_id)
    if not sku.files_can_change():
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
    audit_append(
        actor=actor,
        action="sku.manifest_attached",
        subject=sku,
        data={
            "manifest_sha256": hashlib.sha256(canonical_json(manifest)).hexdigest(),
            "artifact_sha256": manifest["artifact"]["sha256"],
        },
    )
    catalog_changed(sku)
    sku_moderation_enqueue(sku_id=sku.pk, actor=actor)

    from catalog.tasks import sku_manifest_verify as sku_manifest_verify_task

    # A broker outage after the commit is logged; the 10-minute sweep sends the check.
    transaction.on_commit(lambda: sku_manifest_verify_task.delay(sku.pk), robust=True)
    return sku


@dataclass(frozen=True)
class ManifestCheck:
    status: str
    detail: str


def sku_manifest_verify(*, sku_id: int, actor: Actor) -> ManifestCheck | None:
    """Asks the Kernel whether the SKU's manifest signature is good and records the answer.

    A good signature over a manifest that names other bytes than the SKU's artifact is a
    mismatch, not verified. Returns None when there is no manifest, or when it changed while
    the Kernel was asked (the newer manifest gets its own check). An unreachable Kernel is
    recorded as such for a SKU that is not on sale; an active SKU keeps its earlier verdict
    through an outage.

    Records `sku.manifest_verified`, `sku.manifest_mismatch` or `sku.manifest_rejected` (and
    `sku.suspended` when a rejection or a mismatch takes an active SKU off sale), and
    `sku.manifest_unavailable` only when the status becomes unavailable, so the retries during
    an outage do not repeat it.
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
        sku = sku_lock(sku_id)
        if (sku.manifest, sku.manifest_signature) != asked_about:
            return None
        now = timezone.now()
        if sku.status == SkuStatus.ACTIVE and check.status == ManifestStatus.UNAVAILABLE:
            return check
        if check.status == ManifestStatus.VERIFIED:
            # Under the lock: the artifact the manifest must name is the one attached now.
            check = ManifestCheck(
                signed_manifest_status(sku), signed_manifest_detail(sku, check.detail)
            )
            sku.manifest_key_id = key_id
            signed_manifest_record(sku, status=ManifestStatus(check.status), actor=actor)
        elif check.status == ManifestStatus.REJECTED:
            audit_append(
                actor=actor,
                action="sku.manifest_rejected",
                subject=sku,
                data={"reason": check.detail[:NOTE_MAX], "key_id": key_id},
            )
        elif sku.manifest_status != ManifestStatus.UNAVAILABLE:
            audit_append(
                actor=actor,
                action="sku.manifest_unavailable",
                subject=sku,
                data={"detail": check.detail[:NOTE_MAX]},
            )
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
        off_sale = {
            ManifestStatus.REJECTED: "manifest rejected on re-verification",
            ManifestStatus.MISMATCH: "manifest names another artifact on re-verification",
        }
        if sku.status == SkuStatus.ACTIVE and check.status in off_sale:
            fields += sku_status_change(
                sku,
                target=SkuStatus.SUSPENDED,
                reason=f"{off_sale[check.status]}: {check.detail}",
                actor=actor,
                at=now,
            )
        sku.save(update_fields=fields)
        catalog_changed(sku)
    return check


def _moderate_before_activation(*, sku_id: int, actor: Actor) -> str:
    """Asks moderation about the items of an otherwise ready SKU that have no verdict yet (a
    lost task, a change just made), so activation need not wait for a worker. Returns why
    moderation gave no verdict, or "". Outside any transaction: the backend may call out."""
    sku = Sku.objects.select_related("partner", "category", "artifact").get(pk=sku_id)
    if sku_activation_blockers(sku, moderation=False) or not sku_unmoderated_items(sku):
        return ""
    try:
        sku_moderate(sku_id=sku_id, actor=actor)
    except ModerationUnavailable as exc:
        return f"moderation gave no verdict: {exc}"
    return ""


def sku_activate(*, sku_id: int, actor: Actor) -> Sku:
    """Puts a draft or suspended SKU on sale, after a fresh check of its manifest and a
    moderation verdict on whatever of it has none.

    Raises TransitionRefused listing every unmet condition, moderation's among them. Records
    the check (see sku_manifest_verify) and the reviews (see sku_moderate) in their own
    transactions, then `sku.activated`.
    """
    sku = Sku.objects.get(pk=sku_id)
    if not sku.can_become(SkuStatus.ACTIVE):
        raise TransitionRefused(
            slug=sku.slug,
            target=SkuStatus.ACTIVE,
            reasons=[f"a {sku.status} SKU cannot be activated"],
        )
    if sku.manifest is not None:
        sku_manifest_verify(sku_id=sku_id, actor=actor)
    moderation_problem = _moderate_before_activation(sku_id=sku_id, actor=actor)

    with transaction.atomic():
        sku = sku_lock(sku_id)
        reasons = sku_activation_blockers(sku)
        if moderation_problem and reasons:
            reasons.append(moderation_problem)
        if reasons:
            raise TransitionRefused(slug=sku.slug, target=SkuStatus.ACTIVE, reasons=reasons)
        now = timezone.now()
        audit_append(
            actor=actor,
            action="sku.activated",
            subject=sku,
            data={
                "from": sku.status,
                "artifact_sha256": sku.artifact.sha256 if sku.artifact else None,
                "manifest_key_id": sku.manifest_key_id,
            },
        )
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
        catalog_changed(sku)
    return sku


def _sku_transition(
    *, sku_id: int, target: SkuStatus, reason: str, refusal: str, actor: Actor
) -> Sku:
    sku = sku_lock(sku_id)
    if not sku.can_become(target):
        raise TransitionRefused(
            slug=sku.slug, target=target, reasons=[refusal.format(status=sku.status)]
        )
    fields = sku_status_change(sku, target=target, reason=reason, actor=actor, at=timezone.now())
    sku.save(update_fields=[*fields, "updated_at"])
    catalog_changed(sku)
    return sku


@transaction.atomic
def sku_suspend(*, sku_id: int, reason: str = "", actor: Actor) -> Sku:
    """Takes an active SKU off sale; it can be activated again. Records `sku.suspended`."""
    return _sku_transition(
        sku_id=sku_id,
        target=SkuStatus.SUSPENDED,
        reason=reason,
        refusal="only an active SKU can be suspended; this one is {status}",
        actor=actor,
    )


@transaction.atomic
def sku_retire(*, sku_id: int, reason: str = "", actor: Actor) -> Sku:
    """Takes a SKU off sale for good. Records `sku.retired`."""
    return _sku_transition(
        sku_id=sku_id,
        target=SkuStatus.RETIRED,
        reason=reason,
        refusal="this SKU is already {status}",
        actor=actor,
    )


def splits_problems(splits: Sequence[tuple[Partner, int]], *, on_sale: bool) -> list[str]:
    """Everything wrong with a SKU's would-be splits; empty when they may be saved."""
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
    if not splits and on_sale:
        problems.append("a SKU on sale must have royalty splits")
    return problems


def sku_splits_check(*, sku: Sku, splits: Sequence[tuple[Partner, int]]) -> None:
    """Raises what sku_splits_set would refuse for these splits of `sku` as it stands (a SKU not
    saved yet is a draft): SkuLocked for a retired SKU, InvalidSplits listing every problem
    (`errors["splits"]`). sku_splits_set checks again under the SKU's lock."""
    if sku.status == SkuStatus.RETIRED:
        raise SkuLocked(f"{sku.slug} is retired; its splits can no longer change.")
    problems = splits_problems(splits, on_sale=sku.status == SkuStatus.ACTIVE)
    if problems:
        raise InvalidSplits(
            "The royalty splits were not changed: " + "; ".join(problems) + ".",
            errors={"splits": problems},
        )


@transaction.atomic
def sku_splits_set(
    *, sku_id: int, splits: Sequence[tuple[Partner, int]], actor: Actor
) -> list[RoyaltySplit]:
    """Replaces the SKU's royalty splits as a whole.

    The shares must sum to exactly 10,000 basis points; only a SKU that is not on sale may be
    left without splits. Records `sku.splits_changed`; splits equal to the current ones are
    left as they are and record nothing.
    """
    sku = sku_lock(sku_id)
    sku_splits_check(sku=sku, splits=splits)
    current = list(RoyaltySplit.objects.filter(sku=sku).select_related("partner"))
    new = [
        RoyaltySplit(sku=sku, partner=partner, basis_points=basis_points)
        for partner, basis_points in splits
    ]
    before, after = splits_record(current), splits_record(new)
    if before == after:
        return current
    RoyaltySplit.objects.filter(sku=sku).delete()
    created = RoyaltySplit.objects.bulk_create(new)
    audit_append(
        actor=actor,
        action="sku.splits_changed",
        subject=sku,
        data={"before": before, "after": after},
    )
    catalog_changed(sku)
    return created
