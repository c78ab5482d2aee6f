"""A SKU's items that moderation judges, as they stand, each with the fingerprint a verdict is
recorded under: the SHA-256 of the artifact, of the canonical manifest, or of the listing's
canonical text and version."""

import hashlib
from dataclasses import dataclass
from typing import Any

from catalog.models import Artifact, ModerationSubject, Sku
from catalog.moderation.backends import ModerationItem
from marketplace.canonical import canonical_json

LISTING_FIELDS = ("title", "summary", "description")


@dataclass(frozen=True)
class CurrentItem:
    """One item of a SKU as it stands, and what names its content."""

    item: ModerationItem
    fingerprint: str
    artifact: Artifact | None = None


def _sha256(value: Any) -> str:
    return hashlib.sha256(canonical_json(value)).hexdigest()


def _manifest_texts(value: Any, path: str = "manifest") -> dict[str, str]:
    """Every string of a manifest, by its path (`manifest.artifact.filename`)."""
    if isinstance(value, str):
        return {path: value}
    if isinstance(value, dict):
        return {
            name: text
            for key, inner in value.items()
            for name, text in _manifest_texts(inner, f"{path}.{key}").items()
        }
    if isinstance(value, list):
        return {
            name: text
            for index, inner in enumerate(value)
            for name, text in _manifest_texts(inner, f"{path}[{index}]").items()
        }
    return {}


def sku_moderation_items(sku: Sku) -> list[CurrentItem]:
    """The SKU's items that moderation judges, as they stand: the listing always, the artifact
    and the manifest when there are. Caller gives a SKU with its partner, category and
    artifact loaded (sku_lock does)."""
    base = {
        "sku": sku.slug,
        "partner": sku.partner.slug,
        "category_path": sku.category.path,
        "version": sku.version,
    }
    texts = {field: getattr(sku, field) for field in LISTING_FIELDS}
    items = [
        CurrentItem(
            ModerationItem(subject=ModerationSubject.LISTING, texts=texts, **base),
            _sha256({**texts, "version": sku.version}),
        )
    ]
    if sku.artifact is not None:
        artifact = sku.artifact
        items.append(
            CurrentItem(
                ModerationItem(
                    subject=ModerationSubject.ARTIFACT,
                    storage_key=artifact.storage_key,
                    size=artifact.size,
                    sha256=artifact.sha256,
                    **base,
                ),
                artifact.sha256,
                artifact,
            )
        )
    if sku.manifest is not None:
        items.append(
            CurrentItem(
                ModerationItem(
                    subject=ModerationSubject.MANIFEST,
                    texts=_manifest_texts(sku.manifest),
                    **base,
                ),
                _sha256(sku.manifest),
            )
        )
    return items
