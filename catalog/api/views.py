"""The public catalog: anyone may read it, and only SKUs on sale are visible.

Answers are cached per URL (catalog.cache), rendered; a write anywhere in the catalog retires
them all.
"""

from collections.abc import Callable
from typing import Any

from django.http import HttpResponse
from drf_spectacular.utils import extend_schema
from rest_framework import generics
from rest_framework.exceptions import ValidationError
from rest_framework.permissions import AllowAny
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.views import APIView

from catalog.api.filters import SkuFilter
from catalog.api.serializers import (
    CategorySerializer,
    PartnerSerializer,
    SkuDetailSerializer,
    SkuSerializer,
)
from catalog.cache import cache_get, cache_key, cache_set
from catalog.exceptions import SkuNotFound
from catalog.selectors import (
    category_list_public,
    partner_list_public,
    sku_get_public,
    sku_list_public,
)
from marketplace.api.pagination import SignedCursorPagination
from marketplace.api.schema import problem


def cached_response(request: Request, kind: str, build: Callable[[], Any]) -> HttpResponse:
    """The JSON answer to a catalog read, from the cache when it holds it.

    The cache keeps the rendered bytes, not the data: a hit is one read, with no unpickling of
    the page's dicts and no encoding them again. JSON is the API's only renderer, so there is
    no other representation to keep. The ".json" in the key keeps entries cached as data by
    earlier code from being served as bytes during a deploy.
    """
    key = cache_key(f"{kind}.json", request.build_absolute_uri())
    body = cache_get(key)
    if body is None:
        body = JSONRenderer().render(build())
        cache_set(key, body)
    return HttpResponse(body, content_type=JSONRenderer.media_type)


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
        responses={200: SkuSerializer(many=True), 400: problem("A filter did not parse")},
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> HttpResponse:
        return cached_response(request, "skus", lambda: self._page(request))

    def _page(self, request: Request) -> dict[str, Any]:
        filterset = SkuFilter(request.query_params, queryset=self.get_queryset(), request=request)
        if not filterset.is_valid():
            raise ValidationError(
                {field: list(errors) for field, errors in filterset.errors.items()}
            )
        self.cursor_ordering = filterset.ordering_fields()
        page = self.paginate_queryset(filterset.qs)
        return self.get_paginated_response(self.get_serializer(page, many=True).data).data


class SkuDetailView(APIView):
    permission_classes = [AllowAny]

    @extend_schema(
        summary="One SKU on sale",
        responses={200: SkuDetailSerializer, 404: problem("No SKU with that slug is on sale")},
    )
    def get(self, request: Request, slug: str) -> HttpResponse:
        def build() -> dict[str, Any]:
            sku = sku_get_public(slug=slug)
            if sku is None:
                raise SkuNotFound(f"No SKU with slug {slug!r} is on sale.")
            return SkuDetailSerializer(sku).data

        return cached_response(request, "sku", build)


class PartnerListView(generics.ListAPIView):
    permission_classes = [AllowAny]
    serializer_class = PartnerSerializer
    pagination_class = SignedCursorPagination
    filter_backends: list[type] = []
    cursor_ordering = ("slug",)

    def get_queryset(self) -> Any:
        return partner_list_public()

    @extend_schema(summary="Partners", responses={200: PartnerSerializer(many=True)})
    def get(self, request: Request, *args: Any, **kwargs: Any) -> HttpResponse:
        return cached_response(request, "partners", lambda: self.list(request).data)


class CategoryListView(APIView):
    permission_classes = [AllowAny]

    @extend_schema(
        summary="The category tree, flattened in path order",
        responses={200: CategorySerializer(many=True)},
    )
    def get(self, request: Request) -> HttpResponse:
        return cached_response(
            request,
            "categories",
            lambda: {"results": CategorySerializer(category_list_public(), many=True).data},
        )
