"""The public catalog: anyone may read it, and only SKUs on sale are visible.

Answers are cached rendered (catalog.cache), keyed by the path and the validated query in one
spelling, never by the raw URL: a parameter an endpoint does not take is a 400, and so is a
value that does not parse, before anything is cached. Each answer names the scopes it shows
(all SKUs on sale, one SKU, a category, a partner); a write retires the scopes it changed.
"""

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from django.http import HttpResponse
from drf_spectacular.utils import extend_schema
from rest_framework import generics
from rest_framework.exceptions import ValidationError
from rest_framework.permissions import AllowAny
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.views import APIView

from catalog.api.filters import NO_SUCH_CHOICE, SkuFilter, SkuListParams
from catalog.api.serializers import (
    CategoryListSerializer,
    CategorySerializer,
    PartnerSerializer,
    SkuDetailSerializer,
    SkuSerializer,
    sku_list_items,
)
from catalog.cache import ALL_SKUS, cached, category_scope, partner_scope, sku_scope
from catalog.exceptions import SkuNotFound
from catalog.selectors import (
    SkuListQuery,
    category_list_public,
    category_subtree_ids,
    partner_active_id,
    partner_list_public,
    sku_get_public,
    sku_list_public,
)
from marketplace.api.pagination import SignedCursorPagination
from marketplace.api.schema import problem

# The query parameters of a paginated list, besides its filters.
PAGE_PARAMS = ("cursor", "page_size")


def params_refuse_unknown(request: Request, allowed: Iterable[str]) -> None:
    """A 400 naming every query parameter the endpoint does not take (a misspelt filter would
    otherwise answer the unfiltered list, and every junk parameter would be a cache entry)."""
    allowed = sorted(allowed)
    unknown = sorted(set(request.query_params) - set(allowed))
    if unknown:
        takes = f"it takes {', '.join(allowed)}" if allowed else "it takes no parameters"
        raise ValidationError(
            {name: [f"Unknown parameter for this endpoint; {takes}."] for name in unknown}
        )


@dataclass(frozen=True)
class ListQuery:
    """A validated list query: the parameters its cache key is made of, and the base URL of
    its `next`/`previous` links."""

    key: dict[str, str]
    links: str


def list_query(
    request: Request, paginator: SignedCursorPagination, filters: dict[str, str]
) -> ListQuery:
    """`filters` (validated, in one spelling) with the page size (its default filled in) and
    the cursor's content rather than its spelling; a bad page size or a forged cursor is a 400
    here. Precondition: `paginator.ordering` is the ordering the page is read in."""
    size = paginator.get_page_size(request)
    key = {**filters, "page_size": str(size)}
    cursor = paginator.decode_cursor(request)
    if cursor is not None:
        key["cursor"] = f"{cursor.offset}:{int(cursor.reverse)}:{cursor.position}"
    links = (
        filters if size == SignedCursorPagination.page_size else {**filters, "page_size": str(size)}
    )
    base = request.build_absolute_uri(request.path)
    return ListQuery(key, f"{base}?{urlencode(sorted(links.items()))}" if links else base)


def page_data(view: generics.GenericAPIView, queryset: Any, query: ListQuery) -> dict[str, Any]:
    page = view.paginate_queryset(queryset)
    # Links from the validated query, not from the URL as sent: a cached page then links the
    # same whichever spelling of its query was asked first.
    view.paginator.base_url = query.links
    return view.get_paginated_response(view.get_serializer(page, many=True).data).data


# Parameters whose valid values are unbounded (any text, any amount): a query with one is read
# from the database every time, since caching it would let anyone add an entry per request.
UNCACHED_PARAMS = frozenset({"q", "min_price", "max_price"})


def cached_response(
    request: Request,
    kind: str,
    params: dict[str, str],
    build: Callable[[], Any],
    scopes: Collection[str] = (ALL_SKUS,),
) -> HttpResponse:
    """The JSON answer to a catalog read, from the cache when it holds it.

    `params` are the validated query in one spelling with defaults filled in: the key is the
    path and those, so two spellings of one query share an entry and junk adds none. `scopes`
    are what the answer shows (catalog.cache), whose writes retire it.

    The cache keeps the rendered bytes, not the data: a hit is one read, with no unpickling of
    the page's dicts and no encoding them again. JSON is the API's only renderer, so there is
    no other representation to keep. The ".json" in the key keeps entries cached as data by
    earlier code from being served as bytes during a deploy.
    """
    if UNCACHED_PARAMS.intersection(params):
        return HttpResponse(JSONRenderer().render(build()), content_type=JSONRenderer.media_type)
    body = cached(
        f"{kind}.json",
        base_url=request.build_absolute_uri(request.path),
        params=params,
        scopes=scopes,
        build=lambda: JSONRenderer().render(build()),
    )
    return HttpResponse(body, content_type=JSONRenderer.media_type)


def sku_list_page(
    view: "SkuListView", request: Request, filters: SkuListQuery, links: str
) -> dict[str, Any]:
    """A page of the SKU list as SkuSerializer would give it, in one query (plus one per
    category or partner filter, resolving its slug); an unknown slug is a 400 naming it."""
    category_ids = partner_id = None
    if filters.category is not None:
        category_ids = category_subtree_ids(filters.category)
        if not category_ids:
            raise ValidationError({"category": [NO_SUCH_CHOICE]})
    if filters.partner is not None:
        partner_id = partner_active_id(filters.partner)
        if partner_id is None:
            raise ValidationError({"partner": [NO_SUCH_CHOICE]})
    rows = sku_list_public(filters, category_ids=category_ids, partner_id=partner_id)
    paginator = view.paginator
    page = paginator.paginate_queryset(rows, request, view=view)
    # Links from the validated query, not from the URL as sent: a cached page then links the
    # same whichever spelling of its query was asked first.
    paginator.base_url = links
    # CursorPagination.get_paginated_response's members, without a Response in between.
    return {
        "next": paginator.get_next_link(),
        "previous": paginator.get_previous_link(),
        "results": sku_list_items(page or []),
    }


def sku_list_scopes(filters: SkuListQuery) -> list[str]:
    """What a list shows: one category's subtree or one partner's SKUs when filtered so,
    else any SKU on sale."""
    scopes = []
    if filters.category is not None:
        scopes.append(category_scope(filters.category))
    if filters.partner is not None:
        scopes.append(partner_scope(filters.partner))
    return scopes or [ALL_SKUS]


class SkuListView(generics.ListAPIView):
    permission_classes = [AllowAny]
    serializer_class = SkuSerializer
    filterset_class = SkuFilter
    pagination_class = SignedCursorPagination
    cursor_ordering: tuple[str, ...] = ()

    def get_queryset(self) -> Any:
        return sku_list_public()

    @extend_schema(
        summary="SKUs on sale",
        responses={
            200: SkuSerializer(many=True),
            400: problem("A filter did not parse, or a parameter it does not take"),
        },
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> HttpResponse:
        filterset = SkuListParams(request.query_params)
        params_refuse_unknown(request, [*filterset.names, *PAGE_PARAMS])
        if not filterset.is_valid():
            raise ValidationError(
                {field: list(errors) for field, errors in filterset.errors.items()}
            )
        self.cursor_ordering = self.paginator.ordering = filterset.ordering_fields()
        query = list_query(request, self.paginator, filterset.canonical_params())
        filters = filterset.list_query()
        return cached_response(
            request,
            "skus",
            query.key,
            lambda: sku_list_page(self, request, filters, query.links),
            scopes=sku_list_scopes(filters),
        )


class SkuDetailView(APIView):
    permission_classes = [AllowAny]

    @extend_schema(
        summary="One SKU on sale",
        responses={
            200: SkuDetailSerializer,
            400: problem("A query parameter (it takes none)"),
            404: problem("No SKU with that slug is on sale"),
        },
    )
    def get(self, request: Request, slug: str) -> HttpResponse:
        params_refuse_unknown(request, [])

        def build() -> dict[str, Any]:
            sku = sku_get_public(slug=slug)
            if sku is None:
                raise SkuNotFound(f"No SKU with slug {slug!r} is on sale.")
            return SkuDetailSerializer(sku).data

        return cached_response(request, "sku", {}, build, scopes=[sku_scope(slug)])


class PartnerListView(generics.ListAPIView):
    permission_classes = [AllowAny]
    serializer_class = PartnerSerializer
    pagination_class = SignedCursorPagination
    filter_backends: list[type] = []
    cursor_ordering = ("slug",)

    def get_queryset(self) -> Any:
        return partner_list_public()

    @extend_schema(
        summary="Partners",
        responses={
            200: PartnerSerializer(many=True),
            400: problem("A bad page size or cursor, or a parameter it does not take"),
        },
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> HttpResponse:
        params_refuse_unknown(request, PAGE_PARAMS)
        self.paginator.ordering = self.cursor_ordering
        query = list_query(request, self.paginator, {})
        return cached_response(
            request, "partners", query.key, lambda: page_data(self, self.get_queryset(), query)
        )


class CategoryListView(APIView):
    permission_classes = [AllowAny]

    @extend_schema(
        summary="The category tree, flattened in path order",
        responses={
            200: CategoryListSerializer,
            400: problem("A query parameter (it takes none)"),
        },
    )
    def get(self, request: Request) -> HttpResponse:
        params_refuse_unknown(request, [])
        return cached_response(
            request,
            "categories",
            {},
            lambda: {"results": CategorySerializer(category_list_public(), many=True).data},
        )
