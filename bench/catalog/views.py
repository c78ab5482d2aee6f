"""The floor of the catalog benchmark: what plain Django costs for the same page of SKUs.

No DRF, no serializer, no cache, no pagination: one query with the two joins, `.values()` of
the columns the API shows, and `JsonResponse`. It still goes through the project's middleware,
as GET /api/v1/skus does, so the ratio measures the API's own layers (DRF, filters, cursor,
cache and throttle round trips, serializer, renderer) and not gunicorn or Django's core.

`q` and `category` filter as the API does, with the same SQL (catalog.search.sku_search, the
category's subtree ids and one query to find them), so that the search and category pages cost
the floor what they cost the database.
"""

from django.http import HttpRequest, JsonResponse

from catalog.models import Sku
from catalog.search import sku_search
from catalog.selectors import category_subtree_ids

# Same rows as SkuSerializer shows, flattened: the price display string is the one thing the
# API derives that the floor leaves out, since it is not a column.
FLOOR_COLUMNS = (
    "slug",
    "title",
    "summary",
    "version",
    "price_amount",
    "currency",
    "category__slug",
    "category__name",
    "category__path",
    "partner__slug",
    "partner__name",
    "preview_enabled",
    "preview_ttl_seconds",
    "created_at",
    "updated_at",
)
FLOOR_MAX_PAGE_SIZE = 100


def sku_list_floor(request: HttpRequest) -> JsonResponse:
    try:
        size = max(1, min(int(request.GET.get("page_size", "20")), FLOOR_MAX_PAGE_SIZE))
    except ValueError:
        size = 20
    # The API's default ordering ("-created"), on the same SkuQuerySet.active() filter.
    skus = Sku.objects.active()
    if words := request.GET.get("q", "").casefold().split()[:8]:
        skus = sku_search(skus, words)
    if category := request.GET.get("category"):
        skus = skus.filter(category_id__in=category_subtree_ids(category))
    rows = list(skus.order_by("-created_at", "-id").values(*FLOOR_COLUMNS)[:size])
    return JsonResponse({"results": rows})
