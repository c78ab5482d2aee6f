from functools import cache
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django_filters import rest_framework as filters

from catalog.models import Sku
from catalog.selectors import SkuListQuery
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
    # Best match of `q` first (catalog.search); only with `q`.
    "relevance": ("-rank", "-created_at", "-id"),
}
SKU_DEFAULT_ORDERING = "-created"
RELEVANCE = "relevance"
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
    """The SKU list's parameters: what they are, each with its form field (the OpenAPI
    document is made from them). SkuListParams validates them; nothing calls `qs`: the
    selector (catalog.selectors.sku_list_public) filters, and the cursor paginator orders."""

    category = filters.CharFilter(
        method="filter_in_selector",
        max_length=200,
        help_text="A category slug; SKUs in its subcategories are included.",
    )
    partner = filters.CharFilter(
        method="filter_in_selector",
        max_length=200,
        help_text="The slug of an active partner.",
    )
    q = filters.CharFilter(
        method="filter_in_selector",
        max_length=200,
        help_text=(
            "Words in the title, summary or slug (all of them; on PostgreSQL whole words in "
            'web search syntax: "a phrase", or, -word). At most 200 characters; words after '
            "the 8th are ignored."
        ),
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
        method="filter_in_selector",
        help_text=(
            f"One of {', '.join(SKU_ORDERINGS)}; default {SKU_DEFAULT_ORDERING}. "
            f"{RELEVANCE} (best match first) needs q."
        ),
    )

    class Meta:
        model = Sku
        fields: list[str] = []

    def filter_in_selector(self, queryset: QuerySet[Sku], name: str, value: str) -> QuerySet[Sku]:
        # Never called: the view filters through the selector (list_query). The type of
        # `value` is what the OpenAPI document says the parameter is.
        raise NotImplementedError("catalog.selectors.sku_list_public filters the SKU list")


class SkuListParams:
    """The SKU list's query validated by SkuFilter's form fields, each cleaning its value as in
    a form, without building a FilterSet or a form per request (their deep copies of filters
    and fields were a sixth of a page's CPU). Errors are each field's messages, as a form's.

    Validating (`is_valid`) reads no database, so a cached page is found from
    `canonical_params` without a query; the category and partner slugs are looked up when the
    page is built, and an unknown one is a 400 naming it then."""

    names = tuple(SkuFilter.base_filters)

    def __init__(self, data: Any) -> None:
        self.data = data
        self.cleaned_data: dict[str, Any] = {}
        self.errors: dict[str, list[str]] = {}

    def is_valid(self) -> bool:
        for name, field in _sku_filter_fields().items():
            # Form._clean_fields: the widget reads the value (the last one given), the field
            # cleans it. The fields hold no state of a request.
            value = field.widget.value_from_datadict(self.data, {}, name)
            try:
                self.cleaned_data[name] = field.clean(value)
            except ValidationError as exc:
                self.errors[name] = exc.messages
        if self.errors:
            return False
        data = self.cleaned_data
        low, high = data.get("min_price"), data.get("max_price")
        if low is not None and high is not None and low > high:
            self.errors["max_price"] = ["Must not be lower than min_price."]
            return False
        if data.get("ordering") == RELEVANCE and not q_words(data.get("q") or ""):
            self.errors["ordering"] = [
                f"{RELEVANCE} orders SKUs by how well they match q; give q too."
            ]
            return False
        return True

    def ordering_name(self) -> str:
        return self.cleaned_data.get("ordering") or SKU_DEFAULT_ORDERING

    def ordering_fields(self) -> tuple[str, ...]:
        return SKU_ORDERINGS[self.ordering_name()]

    def list_query(self) -> SkuListQuery:
        """The validated filters, for the selector. Precondition: `is_valid()` returned True."""
        data = self.cleaned_data
        return SkuListQuery(
            category=data.get("category") or None,
            partner=data.get("partner") or None,
            words=tuple(q_words((data.get("q") or "").casefold())),
            min_price=data.get("min_price"),
            max_price=data.get("max_price"),
            currency=data.get("currency") or None,
            rank=self.ordering_name() == RELEVANCE,
        )

    def canonical_params(self) -> dict[str, str]:
        """The validated filters as the parameters that decide the answer, each in one
        spelling, defaults left out: two queries that list the same SKUs in the same order
        give the same dict (the cache key, the `next`/`previous` links). Precondition:
        `is_valid()` returned True."""
        data = self.cleaned_data
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


@cache
def _sku_filter_fields() -> dict[str, forms.Field]:
    # The fields of the form FilterSet.get_form_class would make, made once.
    return {name: filter_.field for name, filter_ in SkuFilter.base_filters.items()}
