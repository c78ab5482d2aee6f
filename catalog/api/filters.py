from typing import Any

from django import forms
from django.db.models import Q, QuerySet
from django_filters import rest_framework as filters
from rest_framework.exceptions import ValidationError

from catalog.models import Category, Partner, Sku
from marketplace.money import validate_currency

# The `ordering` values the API accepts, and the order_by each stands for. Each ends on a
# unique column so that cursor pages never skip or repeat a row.
SKU_ORDERINGS: dict[str, tuple[str, ...]] = {
    "created": ("created_at", "id"),
    "-created": ("-created_at", "-id"),
    "price": ("price_amount", "id"),
    "-price": ("-price_amount", "-id"),
    "title": ("title", "id"),
    "-title": ("-title", "-id"),
}
SKU_DEFAULT_ORDERING = "-created"
# Words of `q` that count; the rest are ignored (and so are not part of the cache key).
Q_MAX_WORDS = 8
# Django's own words for a choice that does not exist.
NO_SUCH_CHOICE = "Select a valid choice. That choice is not one of the available choices."


def q_words(value: str) -> list[str]:
    return value.split()[:Q_MAX_WORDS]


class MinorUnitsFilter(filters.NumberFilter):
    """An amount in minor units: a whole number, never a decimal, within a 64-bit column."""

    field_class = forms.IntegerField

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("min_value", 0)
        kwargs.setdefault("max_value", 2**63 - 1)
        super().__init__(*args, **kwargs)


class CurrencyField(forms.CharField):
    def clean(self, value: str | None) -> str | None:
        value = super().clean(value)
        if not value:
            return None
        value = value.upper()
        validate_currency(value)
        return value


class CurrencyFilter(filters.CharFilter):
    field_class = CurrencyField


class SkuFilter(filters.FilterSet):
    """The SKU list's filters. Validating them (`is_valid`) reads no database, so a cached
    page is found from `canonical_params` without a query; the category and partner slugs are
    looked up when the page is built, and an unknown one is a 400 naming it then."""

    category = filters.CharFilter(
        method="filter_category",
        max_length=200,
        help_text="A category slug; SKUs in its subcategories are included.",
    )
    partner = filters.CharFilter(
        method="filter_partner", max_length=200, help_text="The slug of an active partner."
    )
    q = filters.CharFilter(
        method="filter_q", max_length=200, help_text="Words in the title, summary or slug."
    )
    min_price = MinorUnitsFilter(
        field_name="price_amount",
        lookup_expr="gte",
        help_text="Lowest price, in minor units.",
    )
    max_price = MinorUnitsFilter(
        field_name="price_amount",
        lookup_expr="lte",
        help_text="Highest price, in minor units.",
    )
    currency = CurrencyFilter(field_name="currency", help_text="ISO 4217 code, e.g. EUR.")
    ordering = filters.ChoiceFilter(
        choices=[(value, value) for value in SKU_ORDERINGS],
        method="filter_nothing",
        help_text=f"One of {', '.join(SKU_ORDERINGS)}; default {SKU_DEFAULT_ORDERING}.",
    )

    class Meta:
        model = Sku
        fields: list[str] = []

    def filter_category(self, queryset: QuerySet[Sku], name: str, value: str) -> QuerySet[Sku]:
        path = Category.objects.filter(slug=value).values_list("path", flat=True).first()
        if path is None:
            raise ValidationError({"category": [NO_SUCH_CHOICE]})
        return queryset.filter(category__path__startswith=path)

    def filter_partner(self, queryset: QuerySet[Sku], name: str, value: str) -> QuerySet[Sku]:
        partner = Partner.objects.active().filter(slug=value).values_list("pk", flat=True).first()
        if partner is None:
            raise ValidationError({"partner": [NO_SUCH_CHOICE]})
        return queryset.filter(partner_id=partner)

    def filter_q(self, queryset: QuerySet[Sku], name: str, value: str) -> QuerySet[Sku]:
        for word in q_words(value):
            queryset = queryset.filter(
                Q(title__icontains=word) | Q(summary__icontains=word) | Q(slug__icontains=word)
            )
        return queryset

    def filter_nothing(self, queryset: QuerySet[Sku], name: str, value: str) -> QuerySet[Sku]:
        # Ordering is applied by the cursor paginator, which needs to know it.
        return queryset

    def is_valid(self) -> bool:
        valid = super().is_valid()
        data = self.form.cleaned_data if valid else {}
        low, high = data.get("min_price"), data.get("max_price")
        if low is not None and high is not None and low > high:
            self.form.add_error("max_price", "Must not be lower than min_price.")
            return False
        return valid

    def ordering_name(self) -> str:
        return self.form.cleaned_data.get("ordering") or SKU_DEFAULT_ORDERING

    def ordering_fields(self) -> tuple[str, ...]:
        return SKU_ORDERINGS[self.ordering_name()]

    def canonical_params(self) -> dict[str, str]:
        """The validated filters as the parameters that decide the answer, each in one
        spelling, defaults left out: two queries that list the same SKUs in the same order
        give the same dict (the cache key, the `next`/`previous` links). Precondition:
        `is_valid()` returned True."""
        data = self.form.cleaned_data
        params: dict[str, str] = {}
        for name in ("category", "partner", "currency"):
            if data.get(name):
                params[name] = data[name]
        for name in ("min_price", "max_price"):
            if data.get(name) is not None:
                params[name] = str(data[name])
        if data.get("q") and q_words(data["q"]):
            # The search ignores case, so the links do too.
            params["q"] = " ".join(q_words(data["q"].casefold()))
        if self.ordering_name() != SKU_DEFAULT_ORDERING:
            params["ordering"] = self.ordering_name()
        return params
