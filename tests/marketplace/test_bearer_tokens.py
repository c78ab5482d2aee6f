"""Every reader of a bearer token (the API, /health/details, /metrics) parses the
Authorization header by one rule (marketplace.api.authentication.bearer_token): the scheme in
any case, exactly one ASCII token after it, else a 401."""

from typing import Any

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db

HEALTH_TOKEN = "ht-8Kq2Zr5Xw1Lp7Nv4Bc9Md3Fg6Hj0Sa2T"
METRICS_TOKEN = "mt-4kQ9vX2pL7sR1wZ8nB5cH3jF6gT0yD"


@pytest.fixture
def tokens(settings: Any, buyer_token: str) -> dict[str, str]:
    settings.HEALTH_TOKEN = HEALTH_TOKEN
    settings.METRICS_TOKEN = METRICS_TOKEN
    return {
        "/api/v1/orders": buyer_token,
        "/health/details": HEALTH_TOKEN,
        "/metrics": METRICS_TOKEN,
    }


@pytest.mark.parametrize("path", ["/api/v1/orders", "/health/details", "/metrics"])
def test_each_reader_takes_the_scheme_in_any_case_and_refuses_a_malformed_header(
    path: str, tokens: dict[str, str]
) -> None:
    token = tokens[path]

    def get(authorization: str) -> Any:
        return Client().get(path, HTTP_AUTHORIZATION=authorization)

    assert get(f"bearer {token}").status_code in (200, 503)
    assert get(f"BEARER  {token}").status_code in (200, 503)
    for malformed in (f"Bearer {token} extra", "Bearer", "Bearer  ", "Bearer tök"):
        refused = get(malformed)
        assert refused.status_code == 401, malformed
        assert refused["Content-Type"] == "application/problem+json"
        assert refused["WWW-Authenticate"].startswith("Bearer realm=")
