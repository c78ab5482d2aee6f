"""What the services on people send to the database, statement by statement
(tests/orders/statements.py), so that none of them grows unnoticed. Each service's transaction
is a savepoint inside the test's."""

import pytest

from accounts.services import api_token_issue, api_token_revoke, buyer_get_or_create
from tests.catalog.factories import TEST_ACTOR
from tests.orders.statements import locked, statements

pytestmark = pytest.mark.django_db


def test_issuing_a_token_to_a_new_buyer_creates_both_in_one_transaction():
    with statements() as issued:
        api_token_issue(email="new.buyer@example.com", actor=TEST_ACTOR)
    assert issued.shape == [
        "SAVEPOINT",  # one transaction: no savepoint of its own for the buyer
        "SELECT marketplace_user",  # by email, case-insensitively
        "INSERT marketplace_user",
        "INSERT marketplace_apitoken",
        "RELEASE SAVEPOINT",
    ]
    assert issued.audit_events == 2  # buyer.created, api_token.issued


def test_issuing_a_token_to_a_known_buyer():
    buyer_get_or_create(email="known@example.com", actor=TEST_ACTOR)
    with statements() as issued:
        api_token_issue(email="Known@Example.com", actor=TEST_ACTOR)
    assert issued.shape == [
        "SAVEPOINT",
        "SELECT marketplace_user",
        "INSERT marketplace_apitoken",
        "RELEASE SAVEPOINT",
    ]
    assert issued.audit_events == 1


def test_revoking_a_token():
    token, _ = api_token_issue(email="revoked@example.com", actor=TEST_ACTOR)
    with statements() as revoked:
        assert api_token_revoke(token_pk=token.pk, actor=TEST_ACTOR)
    assert revoked.shape == [
        "SAVEPOINT",
        locked("marketplace_apitoken"),
        "UPDATE marketplace_apitoken",
        "RELEASE SAVEPOINT",
    ]
    assert revoked.audit_events == 1

    with statements() as again:
        assert not api_token_revoke(token_pk=token.pk, actor=TEST_ACTOR)
    assert len(again.own) == 3  # the locked read, nothing written
    assert again.audit_events == 0
