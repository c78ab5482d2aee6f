"""Rate limits: anonymous callers by address at the `anon` rate, signed-in callers by account
at the `user` rate."""

import pytest
from rest_framework.test import APIClient
from rest_framework.throttling import SimpleRateThrottle


@pytest.fixture
def low_rates(monkeypatch: pytest.MonkeyPatch) -> None:
    # The throttles read their rates once, when DRF is imported; this sets them for one test.
    monkeypatch.setattr(SimpleRateThrottle, "THROTTLE_RATES", {"anon": "3/min", "user": "1/min"})


@pytest.mark.django_db
@pytest.mark.usefixtures("low_rates")
def test_anonymous_callers_are_held_to_the_anon_rate_only(api_client: APIClient) -> None:
    statuses = [api_client.get("/api/v1/skus").status_code for _ in range(4)]

    assert statuses == [200, 200, 200, 429]


@pytest.mark.usefixtures("low_rates")
def test_signed_in_callers_are_held_to_the_user_rate(buyer_client: APIClient) -> None:
    statuses = [buyer_client.get("/api/v1/skus").status_code for _ in range(2)]

    assert statuses == [200, 429]


@pytest.mark.django_db
@pytest.mark.usefixtures("low_rates")
def test_a_forged_forwarded_for_header_does_not_reset_the_limit(api_client: APIClient) -> None:
    statuses = [
        api_client.get("/api/v1/skus", HTTP_X_FORWARDED_FOR=f"10.0.0.{n}").status_code
        for n in range(4)
    ]

    assert statuses == [200, 200, 200, 429]
