from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from accounts.services import api_token_revoke
from audit.chain import format_time
from audit.models import AuditEvent
from marketplace.models import ApiToken, User
from marketplace.roles import SECURITY
from tests.catalog.factories import TEST_ACTOR
from tests.conftest import _staff

pytestmark = pytest.mark.django_db


def issue(email: str, *args: str) -> str:
    out = StringIO()
    call_command("issue_api_token", email, *args, stdout=out)
    return out.getvalue()


def test_issue_api_token_creates_the_buyer_and_prints_only_the_token():
    output = issue("New.Buyer@Example.com")

    token = output.strip()
    assert output == token + "\n"
    assert token.startswith("mkp_")
    buyer = User.objects.get()
    assert buyer.email == "new.buyer@example.com"
    assert not buyer.is_staff
    assert not buyer.has_usable_password()
    stored = ApiToken.objects.get()
    assert stored.user == buyer
    assert stored.digest == ApiToken.digest_of(token)
    assert token not in (stored.digest, stored.hint)  # only a digest is kept


def test_issue_api_token_reuses_the_existing_account_whatever_the_case(buyer):
    first = issue("BUYER@example.com").strip()
    second = issue(buyer.email).strip()

    assert first != second
    assert User.objects.count() == 1
    assert ApiToken.objects.filter(user=buyer).count() == 2


def test_issue_api_token_refuses_an_invalid_email_and_writes_nothing():
    with pytest.raises(CommandError, match="not a valid email"):
        issue("not-an-email")
    assert not User.objects.exists()
    assert not ApiToken.objects.exists()


def test_issue_api_token_refuses_a_deactivated_account(buyer):
    User.objects.filter(pk=buyer.pk).update(is_active=False)
    with pytest.raises(CommandError, match="deactivated"):
        issue(buyer.email)
    assert not ApiToken.objects.exists()


def test_issue_api_token_with_expiry():
    issue("buyer@example.com", "--expires-days", "7", "--name", "ci")
    stored = ApiToken.objects.get()
    assert stored.name == "ci"
    assert timedelta(days=6, hours=23) < stored.expires_at - timezone.now() <= timedelta(days=7)


def test_bearer_token_authenticates_the_buyer(api_client, buyer, buyer_token):
    response = api_client.get("/api/v1/me", HTTP_AUTHORIZATION=f"Bearer {buyer_token}")

    assert response.status_code == 200
    assert response.json() == {
        "id": str(buyer.uuid),
        "email": buyer.email,
        "display_name": "",
        "date_joined": buyer.date_joined.isoformat().replace("+00:00", "Z"),
    }
    assert ApiToken.objects.get().last_used_at is not None


@pytest.mark.parametrize(
    "header",
    [None, "Bearer mkp_unknown", "Bearer", "Bearer a b", "Token mkp_x"],
    ids=["missing", "unknown", "empty", "two-parts", "other-scheme"],
)
def test_requests_without_a_valid_token_get_401_problem_details(api_client, buyer_token, header):
    kwargs = {"HTTP_AUTHORIZATION": header} if header else {}
    response = api_client.get("/api/v1/me", **kwargs)

    assert response.status_code == 401
    assert response["Content-Type"] == "application/problem+json"
    assert response["WWW-Authenticate"] == 'Bearer realm="marketplace"'
    assert response.json()["status"] == 401


def test_revoked_expired_and_deactivated_tokens_are_refused(api_client, buyer, buyer_token):
    header = {"HTTP_AUTHORIZATION": f"Bearer {buyer_token}"}
    token = ApiToken.objects.get()

    assert api_client.get("/api/v1/me", **header).status_code == 200
    ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert api_client.get("/api/v1/me", **header).status_code == 401

    ApiToken.objects.filter(pk=token.pk).update(expires_at=None)
    User.objects.filter(pk=buyer.pk).update(is_active=False)
    assert api_client.get("/api/v1/me", **header).status_code == 401

    User.objects.filter(pk=buyer.pk).update(is_active=True)
    assert api_token_revoke(token_pk=token.pk, actor=TEST_ACTOR) is True
    assert api_token_revoke(token_pk=token.pk, actor=TEST_ACTOR) is False
    response = api_client.get("/api/v1/me", **header)
    assert response.status_code == 401
    assert "revoked" in response.json()["detail"]


# --- Audit events ------------------------------------------------------------------------------


def recorded() -> list[tuple[str, str, str, str, str, dict]]:
    return [
        (e.action, e.actor_type, e.actor_id, e.subject_type, e.subject_id, e.data)
        for e in AuditEvent.objects.order_by("id")
    ]


def test_issuing_a_token_records_the_new_buyer_and_the_token_never_the_token_itself():
    token = issue("new.buyer@example.com", "--name", "ci", "--expires-days", "7").strip()

    buyer = User.objects.get()
    stored = ApiToken.objects.get()
    command = ("system", "issue_api_token")
    assert recorded() == [
        ("buyer.created", *command, "user", str(buyer.uuid), {}),
        (
            "api_token.issued",
            *command,
            "apitoken",
            str(stored.pk),
            {
                "user": str(buyer.uuid),
                "name": "ci",
                "hint": stored.hint,
                "expires_at": format_time(stored.expires_at),
            },
        ),
    ]
    everything = str(list(AuditEvent.objects.values_list("data", flat=True)))
    assert token not in everything
    assert buyer.email not in everything


def test_a_token_for_an_existing_buyer_records_only_the_token(buyer):
    issue(buyer.email)

    assert [action for action, *_ in recorded()] == ["api_token.issued"]


def test_refused_tokens_record_nothing(buyer):
    User.objects.filter(pk=buyer.pk).update(is_active=False)
    for email in ("not-an-email", buyer.email):
        with pytest.raises(CommandError):
            issue(email)
    assert recorded() == []


def test_revoking_in_the_admin_records_the_staff_user_once(client, buyer, buyer_token):
    security = _staff("security@example.com", SECURITY)
    client.force_login(security)
    token = ApiToken.objects.get()
    before = AuditEvent.objects.count()

    for _ in range(2):  # the second time, it is already revoked: nothing to record
        client.post(
            "/admin/marketplace/apitoken/", {"action": "revoke", "_selected_action": [token.pk]}
        )

    assert ApiToken.objects.get().revoked_at is not None
    assert recorded()[before:] == [
        (
            "api_token.revoked",
            "staff",
            str(security.uuid),
            "apitoken",
            str(token.pk),
            {"user": str(buyer.uuid), "hint": token.hint},
        )
    ]
