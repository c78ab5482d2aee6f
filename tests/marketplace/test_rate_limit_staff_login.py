"""Staff sign-in: after repeated failures an account is locked out from that address
(django-axes, keyed on username and client address), even for the right password, while the
same account from another address and other accounts from this one still sign in."""

from datetime import timedelta
from typing import Any

import pytest
from axes.models import AccessAttempt
from django.test import Client

from marketplace import ratelimit
from marketplace.models import User
from tests.conftest import STAFF_PASSWORD

FAILURES = 3
ATTACKER = "203.0.113.9"
OFFICE = "198.51.100.20"


@pytest.fixture(autouse=True)
def _lockout_on(settings: Any) -> None:
    ratelimit.local_counters.clear()
    settings.AXES_ENABLED = True
    settings.AXES_FAILURE_LIMIT = FAILURES
    settings.AXES_COOLOFF_TIME = timedelta(minutes=15)


def sign_in(client: Client, email: str, password: str, address: str, **headers: str) -> Any:
    return client.post(
        "/admin/login/?next=/admin/",
        {"username": email, "password": password},
        REMOTE_ADDR=address,
        **headers,
    )


def signed_in(response: Any) -> bool:
    return response.status_code == 302 and response["Location"] == "/admin/"


def test_repeated_failures_lock_the_account_out_from_that_address(
    content_ops: User, finance_staff: User
) -> None:
    attacker = Client()
    for _ in range(FAILURES - 1):
        assert sign_in(attacker, content_ops.email, "wrong", ATTACKER).status_code == 200

    locked = sign_in(attacker, content_ops.email, "wrong", ATTACKER)
    right_password = sign_in(attacker, content_ops.email, STAFF_PASSWORD, ATTACKER)

    for response in (locked, right_password):
        # A page, as the admin's form is, with the status and the wait of the problem.
        assert response.status_code == 429
        assert response["Content-Type"].startswith("text/html")
        assert response["Retry-After"] == "900"
        page = response.content.decode()
        assert "<h1>Signing in is locked</h1>" in page
        assert "try again in 15 minutes" in page
    assert "_auth_user_id" not in attacker.session
    attempt = AccessAttempt.objects.get()
    assert (attempt.username, attempt.ip_address) == (content_ops.email, ATTACKER)
    # The same account from another address, another account from this one.
    assert signed_in(sign_in(Client(), content_ops.email, STAFF_PASSWORD, OFFICE))
    assert signed_in(sign_in(Client(), finance_staff.email, STAFF_PASSWORD, ATTACKER))


def test_a_success_before_the_limit_starts_the_count_again(content_ops: User) -> None:
    client = Client()
    for _ in range(FAILURES - 1):
        sign_in(client, content_ops.email, "wrong", OFFICE)
    assert signed_in(sign_in(client, content_ops.email, STAFF_PASSWORD, OFFICE))
    client.logout()

    for _ in range(FAILURES - 1):
        assert sign_in(client, content_ops.email, "wrong", OFFICE).status_code == 200
    assert signed_in(sign_in(client, content_ops.email, STAFF_PASSWORD, OFFICE))


def test_behind_a_trusted_proxy_the_lockout_is_keyed_on_the_forwarded_address(
    content_ops: User, settings: Any
) -> None:
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}
    proxy = "10.0.0.1"
    # The attacker's own X-Forwarded-For claim comes first; the proxy adds what it saw.
    forwarded = {"HTTP_X_FORWARDED_FOR": f"{OFFICE}, {ATTACKER}"}
    for _ in range(FAILURES):
        sign_in(Client(), content_ops.email, "wrong", proxy, **forwarded)

    assert AccessAttempt.objects.get().ip_address == ATTACKER
    from_office = {"HTTP_X_FORWARDED_FOR": OFFICE}
    assert signed_in(sign_in(Client(), content_ops.email, STAFF_PASSWORD, proxy, **from_office))
    again = sign_in(Client(), content_ops.email, STAFF_PASSWORD, proxy, **forwarded)
    assert again.status_code == 429
