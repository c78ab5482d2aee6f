"""Every 503 (and every error that names when to come back) says the same number of seconds in
Retry-After and in the body's `retry_after` (docs/api.md), from the view's answer and the
API's alike."""

import json
from typing import Any

import pytest
from django.test import RequestFactory

from licensing.exceptions import KeyServiceUnavailable, PackageUnavailable
from marketplace.api.problems import error_response, exception_handler
from marketplace.exceptions import ApplicationError, ServiceUnavailable
from marketplace.maintenance import MaintenanceMode
from marketplace.ratelimit import CacheUnavailable
from orders.exceptions import PaymentProviderUnavailable


class SomeDependencyDown(ApplicationError):
    code = "some-dependency-down"
    status = 503


def answers(exc: ApplicationError) -> list[tuple[str, Any]]:
    request = RequestFactory().get("/api/v1/checkout")
    plain = error_response(request, exc)
    api = exception_handler(exc, {"request": request})
    assert api is not None
    return [
        (plain["Retry-After"], json.loads(plain.content)["retry_after"]),
        (api["Retry-After"], api.data["retry_after"]),
    ]


@pytest.mark.parametrize(
    "make",
    [
        lambda: SomeDependencyDown("down"),
        lambda: PaymentProviderUnavailable("Stripe could not be reached."),
        lambda: PackageUnavailable("no package"),
        lambda: KeyServiceUnavailable("no key"),
        lambda: ServiceUnavailable("down"),
        lambda: CacheUnavailable("no counters"),
    ],
    ids=[
        "a 503 of its own",
        "PaymentProviderUnavailable",
        "PackageUnavailable",
        "KeyServiceUnavailable",
        "ServiceUnavailable",
        "CacheUnavailable",
    ],
)
def test_a_503_says_the_same_wait_in_the_header_and_the_body(make: Any, settings: Any) -> None:
    settings.OUTAGE_RETRY_AFTER_SECONDS = 17
    exc = make()
    expected = 5 if isinstance(exc, CacheUnavailable) else 17

    assert answers(exc) == [(str(expected), expected)] * 2


def test_a_503_that_names_its_own_wait_says_that_one(settings: Any) -> None:
    settings.MAINTENANCE_RETRY_AFTER_SECONDS = 240

    assert answers(MaintenanceMode("maintenance")) == [("240", 240)] * 2
    assert answers(ServiceUnavailable("down", retry_after=9)) == [("9", 9)] * 2


def test_an_error_that_is_not_a_503_and_names_no_wait_has_neither() -> None:
    request = RequestFactory().get("/api/v1/checkout")
    response = error_response(request, ApplicationError("bad"))

    assert "Retry-After" not in response
    assert "retry_after" not in json.loads(response.content)
