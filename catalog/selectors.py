"""Reads of the catalog. Each does its own select_related, so a page's query count does not
depend on its length."""

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any

from django.db.models import Count, Q, QuerySet, Subquery, Sum

from catalog.manifests import manifest_disagreements
from catalog.models import (
    BASIS_POINTS_TOTAL,
    Category,
    ManifestStatus,
    ModerationReview,
    ModerationState,
    Partner,
    Sku,
    SkuStatus,
)
from catalog.moderation.items import CurrentItem, sku_moderation_items
from catalog.search import sku_search

# What a list of SKUs shows (catalog.api.serializers.sku_list_items) and orders by (the cursor
# reads the ordering column of a page's last row), as `values()` names: a page is one query,
# read into dicts of these columns only, never into model instances.
SKU_LIST_COLUMNS = (
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


@dataclass(frozen=True)
class SkuListQuery:
    """The SKU list's validated filters (catalog.api.filters.SkuFilter.list_query)."""

    category: str | None = None  # slug; its subcategories are included
    partner: str | None = None  # slug of an active partner
    words: tuple[str, ...] = ()  # of `q` (catalog.search)
    min_price: int | None = None
    max_price: int | None = None
    currency: str | None = None
    rank: bool = False  # annotate `rank`, the relevance of `words`


def category_subtree_ids(slug: str) -> list[int]:
    """The ids of the category with `slug` and of every category below it, in one query;
    empty when no category has that slug."""
    path = Category.objects.filter(slug=slug).values("path")[:1]
    return list(
        Category.objects.filter(path__startswith=Subquery(path)).values_list("pk", flat=True)
    )


def partner_active_id(slug: str) -> int | None:
    return Partner.objects.active().filter(slug=slug).values_list("pk", flat=True).first()


def sku_list_public(
    query: SkuListQuery = SkuListQuery(),
    *,
    category_ids: Collection[int] | None = None,
    partner_id: int | None = None,
) -> QuerySet[Sku, dict[str, Any]]:
    """The SKUs on sale that `query` selects, as dicts of SKU_LIST_COLUMNS (and `rank` when
    asked), not yet ordered. `category_ids` and `partner_id` are `query`'s category subtree and
    partner as the caller resolved them (category_subtree_ids, partner_active_id).

    A category filter is `category_id IN (...)`, which the index on (category, -created_at,
    -id) of the SKUs on sale answers; a join on the category's path could not use it."""
    queryset = _sku_list_base().all()
    if category_ids is not None:
        queryset = queryset.filter(category_id__in=category_ids)
    if partner_id is not None:
        queryset = queryset.filter(partner_id=partner_id)
    if query.min_price is not None:
        queryset = queryset.filter(price_amount__gte=query.min_price)
    if query.max_price is not None:
        queryset = queryset.filter(price_amount__lte=query.max_price)
    if query.currency:
        queryset = queryset.filter(currency=query.currency)
    if query.words:
        # An annotation after values() is one more member of each row (`rank`).
        queryset = sku_search(queryset, list(query.words), rank=query.rank)
    return queryset


@cache
def _sku_list_base() -> QuerySet[Sku, dict[str, Any]]:
    # Resolving the columns and their two joins cost a twentieth of an uncached page; each
    # read filters a clone (`.all()`), so this one is never evaluated.
    return Sku.objects.active().values(*SKU_LIST_COLUMNS)


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


def sku_activation_blockers(sku: Sku, *, moderation: bool = True) -> list[str]:
    """Every reason the SKU cannot go on sale now, in plain words; empty when it can.

    Uses the recorded manifest and moderation verdicts; sku_activate records a fresh manifest
    verdict first, and asks moderation about what has none. `moderation=False` leaves the
    moderation verdicts out (sku_activate asks moderation only about an otherwise ready SKU).
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
    if moderation:
        # An item without a verdict yet is named only once nothing else stands in the way:
        # activation then asks moderation about it itself (sku_activate).
        reasons.extend(moderation_blockers(sku, unreviewed=not reasons))
    return reasons


# --- Moderation --------------------------------------------------------------------------------


def moderation_reviewed_keys(sku: Sku, items: Iterable[CurrentItem]) -> set[tuple[str, str]]:
    """The (subject, fingerprint) of `items` that already have a verdict."""
    return set(
        ModerationReview.objects.filter(
            sku=sku, fingerprint__in=[current.fingerprint for current in items]
        ).values_list("subject", "fingerprint")
    )


def sku_unmoderated_items(sku: Sku) -> list[CurrentItem]:
    """The SKU's current items that have no verdict yet."""
    items = sku_moderation_items(sku)
    reviewed = moderation_reviewed_keys(sku, items)
    return [
        current for current in items if (current.item.subject, current.fingerprint) not in reviewed
    ]


def sku_current_reviews(sku: Sku) -> list[tuple[CurrentItem, ModerationReview | None]]:
    """Each current item of the SKU with its verdict, None where it has none yet; one query."""
    items = sku_moderation_items(sku)
    reviews = {
        (review.subject, review.fingerprint): review
        for review in ModerationReview.objects.filter(
            sku=sku, fingerprint__in=[current.fingerprint for current in items]
        )
    }
    return [
        (current, reviews.get((current.item.subject, current.fingerprint))) for current in items
    ]


def _rules_broken(review: ModerationReview) -> str:
    return "; ".join(f"[{reason.get('code')}] {reason.get('message')}" for reason in review.reasons)


def moderation_blockers(sku: Sku, *, unreviewed: bool = True) -> list[str]:
    """Why moderation keeps the SKU off sale, per item: waiting for a moderator, blocked or
    rejected, with the rules it broke, and (with `unreviewed`) not moderated yet. Empty when
    every current item has passed."""
    reasons: list[str] = []
    for current, review in sku_current_reviews(sku):
        subject = current.item.subject
        if review is None:
            if unreviewed:
                reasons.append(f"the {subject} has not been through moderation yet")
        elif review.state == ModerationState.FLAGGED:
            reasons.append(f"the {subject} waits for a moderator's review: {_rules_broken(review)}")
        elif review.state == ModerationState.BLOCKED:
            reasons.append(f"moderation blocked the {subject}: {_rules_broken(review)}")
        elif review.state == ModerationState.REJECTED:
            reasons.append(
                f"a moderator rejected the {subject}: {review.decision_reason}"
                + (f" ({_rules_broken(review)})" if review.reasons else "")
            )
    return reasons


def moderation_queue() -> QuerySet[ModerationReview]:
    """The flagged reviews waiting for a moderator, oldest first."""
    return (
        ModerationReview.objects.waiting()
        .select_related("sku", "sku__partner", "submitted_by", "artifact")
        .order_by("created_at", "id")
    )
