"""What the catalog's audit events say about a change: fields before and after, as JSON the
audit chain accepts (no floats; foreign keys by slug; amounts in minor units)."""

from collections.abc import Collection, Mapping
from typing import Any

from catalog.models import Category, Partner, RoyaltySplit, Sku

# Long free text: an event names the field as changed but does not copy the text into the log.
TEXT_NOT_RECORDED = frozenset({"description"})
# Reasons and details from elsewhere (the Kernel's answers) are cut to this many characters.
NOTE_MAX = 500

PARTNER_FIELDS = (
    "slug",
    "name",
    "kind",
    "legal_name",
    "contact_email",
    "website",
    "description",
    "contract_reference",
    "payout_reference",
    "is_active",
)
SKU_FIELDS = (
    "slug",
    "title",
    "summary",
    "description",
    "category",
    "partner",
    "version",
    "price_amount",
    "currency",
    "license_duration_days",
    "license_seats",
    "license_entitlements",
    "license_terms_url",
    "preview_enabled",
    "preview_ttl_seconds",
)


def partner_fields(partner: Partner) -> dict[str, Any]:
    return {field: getattr(partner, field) for field in PARTNER_FIELDS}


def category_fields(category: Category) -> dict[str, Any]:
    return {
        "slug": category.slug,
        "name": category.name,
        "description": category.description,
        "parent": category.parent.slug if category.parent_id else None,
        "path": category.path,
    }


def sku_fields(sku: Sku) -> dict[str, Any]:
    values = {
        field: getattr(sku, field) for field in SKU_FIELDS if field not in ("partner", "category")
    }
    values["partner"] = sku.partner.slug
    values["category"] = sku.category.slug
    values["price_amount"] = int(sku.price_amount)
    values["license_entitlements"] = list(sku.license_entitlements or [])
    return values


def recorded(values: Mapping[str, Any]) -> dict[str, Any]:
    """The values of a new row as its creation event records them."""
    return {field: value for field, value in values.items() if field not in TEXT_NOT_RECORDED}


def changes(
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    *,
    not_recorded: Collection[str] = TEXT_NOT_RECORDED,
) -> dict[str, Any] | None:
    """`{"changed": [names], "before": {...}, "after": {...}}`, or None when nothing changed.
    Fields in `not_recorded` are named in `changed` only."""
    changed = sorted(field for field in after if before.get(field) != after[field])
    if not changed:
        return None
    shown = [field for field in changed if field not in not_recorded]
    return {
        "changed": changed,
        "before": {field: before.get(field) for field in shown},
        "after": {field: after[field] for field in shown},
    }


def splits_record(splits: Collection[RoyaltySplit]) -> list[dict[str, Any]]:
    """Splits in the order the model sorts them: largest share first, then by partner."""
    rows = [{"partner": split.partner.slug, "basis_points": split.basis_points} for split in splits]
    return sorted(rows, key=lambda row: (-row["basis_points"], row["partner"]))
