"""Buyers on the API with the provider's access tokens (accounts.api.authentication), and a
buyer's own API tokens (GET /api/v1/tokens, DELETE /api/v1/tokens/{id}), against the real
provider process."""

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection
from rest_framework.test import APIClient

from accounts.models import Identity
from accounts.services import api_token_issue
from audit.models import AuditEvent
from marketplace import oidc
from marketplace.models import ApiToken, User
from orders.models import Order
from tests.catalog.factories import TEST_ACTOR
from tests.orders.factories import sku_for_sale
from tests.support.oidc import API_AUDIENCE, OIDCProvider

pytestmark = pytest.mark.django_db


@pytest.fixture
def provider(oidc_provider: OIDCProvider, settings: Any) -> Iterator[OIDCProvider]:
    settings.OIDC_ISSUER = oidc_provider.issuer
    settings.OIDC_CLIENT_ID = oidc_provider.client_id
    settings.OIDC_API_AUDIENCE = API_AUDIENCE
    oidc.forget()
    yield oidc_provider
    oidc.forget()


def bearer(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def claims(provider: OIDCProvider, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": provider.issuer, "sub": "forged", "aud": API_AUDIENCE, "iat": now}
    base["exp"] = now + 300
    base.update(changes)
    return base


def test_a_provider_token_makes_a_buyer_on_first_use(provider: OIDCProvider):
    provider.set_account(
        "buyer-first", claims={"email": "first@example.com", "email_verified": True}
    )
    token = provider.access_token("buyer-first")

    first = bearer(token).get("/api/v1/me")
    second = bearer(token).get("/api/v1/me")

    assert first.status_code == 200, first.content
    assert second.json() == first.json()
    identity = Identity.objects.select_related("user").get(subject="buyer-first")
    assert identity.issuer == provider.issuer
    assert first.json()["id"] == str(identity.user.uuid)
    assert not identity.user.is_staff
    assert User.objects.count() == 1
    assert AuditEvent.objects.filter(action="buyer.created").count() == 1
    linked = AuditEvent.objects.get(action="identity.linked")
    assert linked.data == {"issuer": provider.issuer, "subject": "buyer-first"}


def test_the_email_is_taken_only_when_verified_and_free(provider: OIDCProvider):
    User.objects.create_user(email="taken@example.com")
    cases = {
        "buyer-verified": ({"email": "mine@example.com", "email_verified": True}, True),
        "buyer-unverified": ({"email": "notmine@example.com", "email_verified": False}, False),
        "buyer-taken": ({"email": "taken@example.com", "email_verified": True}, False),
    }
    for name, (account_claims, keeps_email) in cases.items():
        # The API's access token carries the claims as signed by the provider.
        token = provider.sign(
            claims(provider, sub=name, **account_claims), header={"typ": "at+jwt"}
        )

        assert bearer(token).get("/api/v1/me").status_code == 200, name

        user = Identity.objects.get(subject=name).user
        assert (user.email == account_claims["email"]) is keeps_email, name
        if not keeps_email:
            assert user.email.endswith("@users.invalid")
    assert User.objects.get(email="taken@example.com").identities.count() == 0


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"aud": "https://elsewhere.example"}, "token-wrong-audience"),
        ({"iss": "https://id.elsewhere.example"}, "token-wrong-issuer"),
        ({"exp": int(time.time()) - 600, "iat": int(time.time()) - 900}, "token-expired"),
        ({"nbf": int(time.time()) + 3600}, "token-not-yet-valid"),
    ],
)
def test_refused_tokens_are_401_problems_and_create_nobody(
    provider: OIDCProvider, changes: dict[str, Any], code: str
):
    token = provider.sign(claims(provider, **changes), header={"typ": "at+jwt"})

    response = bearer(token).get("/api/v1/me")

    assert response.status_code == 401
    assert response["Content-Type"] == "application/problem+json"
    assert response["WWW-Authenticate"] == 'Bearer realm="marketplace"'
    assert response.json()["code"] == code
    assert not User.objects.exists()
    assert not AuditEvent.objects.exists()


def test_forged_tokens_are_refused(provider: OIDCProvider):
    hs256 = provider.sign(claims(provider), key="hs256-with-public")
    tampered = provider.access_token("buyer").rsplit(".", 1)[0] + ".AAAA"

    assert bearer(hs256).get("/api/v1/me").json()["code"] == "token-unsupported-algorithm"
    assert bearer(tampered).get("/api/v1/me").json()["code"] == "token-bad-signature"
    assert not User.objects.exists()


def test_a_staff_id_token_is_not_a_buyers_access_token(provider: OIDCProvider, settings: Any):
    # Even where the API's audience is the staff client (production refuses that setting).
    settings.OIDC_API_AUDIENCE = provider.client_id
    id_token = provider.code_flow_tokens("buyer")["id_token"]

    response = bearer(id_token).get("/api/v1/me")

    assert response.status_code == 401
    assert response.json()["code"] == "token-not-an-access-token"
    assert not User.objects.exists()


def test_provider_tokens_are_not_taken_when_no_audience_is_set(
    provider: OIDCProvider, settings: Any
):
    settings.OIDC_API_AUDIENCE = ""

    response = bearer(provider.access_token("buyer")).get("/api/v1/me")

    assert response.status_code == 401
    assert not User.objects.exists()


def test_a_buyer_checks_out_with_the_providers_token(provider: OIDCProvider):
    sku = sku_for_sale(price=1500, currency="EUR")
    client = bearer(provider.access_token("buyer"))

    response = client.post(
        "/api/v1/checkout", {"sku": sku.slug}, format="json", HTTP_IDEMPOTENCY_KEY="jwt-1"
    )

    assert response.status_code == 201, response.content
    order = Order.objects.get()
    assert order.buyer == Identity.objects.get(subject="buyer").user


def test_api_tokens_keep_working_beside_provider_tokens(provider: OIDCProvider):
    user = User.objects.create_user(email="classic@example.com")
    _, token = api_token_issue(email=user.email, actor=TEST_ACTOR)

    assert bearer(token).get("/api/v1/me").json()["email"] == "classic@example.com"


@pytest.mark.django_db(transaction=True)
def test_two_first_requests_at_once_make_one_buyer(provider: OIDCProvider):
    if connection.vendor != "postgresql":
        pytest.skip("concurrent first use needs PostgreSQL's concurrent writers")
    token = provider.access_token("buyer")
    answers: list[int] = []
    start = threading.Barrier(4)

    def first_use() -> None:
        try:
            start.wait()
            answers.append(bearer(token).get("/api/v1/me").status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=first_use) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert answers == [200] * 4
    assert User.objects.count() == 1
    assert Identity.objects.count() == 1


# --- A buyer's own API tokens ------------------------------------------------------------------


def test_a_buyer_lists_their_own_tokens_never_the_secret():
    user = User.objects.create_user(email="lister@example.com")
    _, token = api_token_issue(email=user.email, actor=TEST_ACTOR, name="laptop")
    api_token_issue(email=user.email, actor=TEST_ACTOR, name="ci")
    api_token_issue(email="someone-else@example.com", actor=TEST_ACTOR, name="theirs")

    response = bearer(token).get("/api/v1/tokens")

    assert response.status_code == 200
    assert [t["name"] for t in response.json()] == ["ci", "laptop"]
    assert all(token not in str(t) for t in response.json())
    assert set(response.json()[0]) == {
        "id",
        "name",
        "hint",
        "created_at",
        "expires_at",
        "last_used_at",
        "revoked_at",
    }


def test_a_buyer_revokes_a_token_and_it_stops_working():
    user = User.objects.create_user(email="revoker@example.com")
    _, keep = api_token_issue(email=user.email, actor=TEST_ACTOR, name="keep")
    doomed, doomed_token = api_token_issue(email=user.email, actor=TEST_ACTOR, name="doomed")

    response = bearer(keep).delete(f"/api/v1/tokens/{doomed.pk}")

    assert response.status_code == 204
    assert bearer(doomed_token).get("/api/v1/me").status_code == 401
    assert bearer(keep).get("/api/v1/me").status_code == 200
    revoked = AuditEvent.objects.get(action="api_token.revoked")
    assert revoked.actor_id == str(user.uuid)


def test_another_buyers_token_is_404_and_untouched():
    user = User.objects.create_user(email="one@example.com")
    _, mine = api_token_issue(email=user.email, actor=TEST_ACTOR)
    theirs, _ = api_token_issue(email="two@example.com", actor=TEST_ACTOR)

    response = bearer(mine).delete(f"/api/v1/tokens/{theirs.pk}")

    assert response.status_code == 404
    assert response["Content-Type"] == "application/problem+json"
    assert ApiToken.objects.get(pk=theirs.pk).revoked_at is None
    assert not AuditEvent.objects.filter(action="api_token.revoked").exists()


def test_the_token_list_needs_a_token():
    assert APIClient().get("/api/v1/tokens").status_code == 401
