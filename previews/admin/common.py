"""What the previews admin pages share."""

from typing import TypeVar

from django.db.models import Model, Q, QuerySet
from django.http import HttpRequest
from django.template.defaultfilters import filesizeformat

from catalog.models import Sku
from catalog.partner_scope import partner_scope

_M = TypeVar("_M", bound=Model)


def of_their_skus(queryset: QuerySet[_M], request: HttpRequest) -> QuerySet[_M]:
    """`queryset` (of rows with a `sku`) narrowed for Partner staff to their partner's SKUs."""
    return partner_scope(queryset, request.user, lambda partner: Q(sku__partner=partner))


def their_skus(request: HttpRequest) -> QuerySet[Sku]:
    """Every SKU, or for Partner staff their partner's."""
    return partner_scope(Sku.objects.all(), request.user, lambda partner: Q(partner=partner))


def size_text(size: int) -> str:
    return f"{filesizeformat(size)} ({size:,} bytes)"


def short_digest(value: str) -> str:
    return f"{value[:12]}…" if value else "—"
