"""Money is an integer amount in the currency's minor units plus an ISO 4217 code."""

import datetime
from functools import lru_cache

from babel.core import get_global
from babel.numbers import get_currency_precision, get_territory_currencies
from django.core.exceptions import ValidationError


@lru_cache(maxsize=1)
def currency_codes() -> frozenset[str]:
    """ISO 4217 codes that are legal tender somewhere today (from CLDR), without the
    historic ones (DEM, FRF, ...) that cannot be charged."""
    today = datetime.datetime.now(tz=datetime.UTC).date()
    codes: set[str] = set()
    for territory in get_global("territory_currencies"):
        codes.update(get_territory_currencies(territory, start_date=today, tender=True))
    return frozenset(codes)


def validate_currency(code: str) -> None:
    if code not in currency_codes():
        raise ValidationError(
            "%(code)s is not an ISO 4217 currency code in use (e.g. USD, EUR, JPY).",
            code="invalid_currency",
            params={"code": code},
        )


def currency_exponent(code: str) -> int:
    """Number of minor-unit digits: 2 for USD, 0 for JPY, 3 for KWD."""
    return get_currency_precision(code)


def format_amount(amount: int, currency: str) -> str:
    exponent = currency_exponent(currency)
    if exponent == 0:
        return f"{amount} {currency}"
    sign = "-" if amount < 0 else ""
    whole, fraction = divmod(abs(amount), 10**exponent)
    return f"{sign}{whole}.{fraction:0{exponent}d} {currency}"
