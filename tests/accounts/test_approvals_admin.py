"""Pending approvals in the admin and `manage.py approvals`: the list, the Approve and Reject
buttons (refusals shown as error messages, nothing written), the maintenance switch filed from
the page and, once approved, checkout answering 503 `maintenance` until it is off again."""

import io
import uuid
from typing import Any

import pytest
from django.contrib.messages import get_messages
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from accounts.approval_services import approval_approve, approval_request
from accounts.models import ApprovalDecision, ApprovalRequest, ApprovalStatus
from audit.models import AuditEvent
from catalog.models import Sku
from marketplace.maintenance import maintenance_on
from marketplace.models import User
from marketplace.roles import FINANCE, SECURITY
from tests.conftest import _staff
from tests.orders.factories import sku_for_sale

pytestmark = pytest.mark.django_db

APPROVALS = "/admin/accounts/approvalrequest/"


def messages_of(response: Any) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


@pytest.fixture
def security() -> User:
    return _staff("security@example.com", SECURITY)


@pytest.fixture
def security2() -> User:
    return _staff("security2@example.com", SECURITY)


def as_client(client: Any, user: User) -> Any:
    client.force_login(user)
    return client


def file_maintenance(by: User, kind: str = "maintenance.on") -> ApprovalRequest:
    return approval_request(kind=kind, params={}, reason="upgrade", requested_by=by)


def test_the_list_shows_pending_requests_of_the_kinds_one_decides(client, security, security2):
    pending = file_maintenance(security)
    rotated = approval_request(
        kind="signing_key.rotate", params={"purpose": "audit"}, reason="x", requested_by=security
    )
    approval_approve(rotated.pk, by=security2)
    finance = _staff("finance@example.com", FINANCE)

    page = as_client(client, security2).get(APPROVALS)

    assert page.status_code == 200
    assert [r.pk for r in page.context["cl"].result_list] == [pending.pk]
    body = page.content.decode()
    assert "Turn maintenance mode on" in body
    assert "0 of 1" in body
    everything = client.get(APPROVALS, {"status": "all"})
    assert {r.pk for r in everything.context["cl"].result_list} == {pending.pk, rotated.pk}
    # Finance decides refunds only: the Security kinds are not theirs to see.
    assert list(as_client(client, finance).get(APPROVALS).context["cl"].result_list) == []


def test_approve_and_reject_buttons(client, security, security2):
    request = file_maintenance(security)
    page = as_client(client, security2).get(f"{APPROVALS}{request.pk}/change/")
    assert page.status_code == 200
    assert page.context["can_decide"] is True
    assert 'name="approve"' in page.content.decode()

    assert client.get(f"{APPROVALS}{request.pk}/approve/").status_code == 405
    response = client.post(f"{APPROVALS}{request.pk}/approve/", {"note": "ok"}, follow=True)

    assert messages_of(response)[0].startswith("Approved and applied: Turn maintenance mode on")
    assert ApprovalRequest.objects.get(pk=request.pk).status == ApprovalStatus.APPLIED
    assert maintenance_on()

    off = file_maintenance(security, "maintenance.off")
    empty = client.post(f"{APPROVALS}{off.pk}/reject/", {"reason": " "}, follow=True)
    assert messages_of(empty) == ["Not rejected: Say why the request is rejected."]
    client.post(f"{APPROVALS}{off.pk}/reject/", {"reason": "not yet"})
    assert ApprovalRequest.objects.get(pk=off.pk).status == ApprovalStatus.REJECTED
    assert maintenance_on()


def test_a_refused_approval_is_an_error_message_and_writes_nothing(client, security):
    request = file_maintenance(security)
    events = AuditEvent.objects.count()
    page = as_client(client, security).get(f"{APPROVALS}{request.pk}/change/")
    assert page.context["is_own"] is True
    assert 'name="approve"' not in page.content.decode()

    response = client.post(f"{APPROVALS}{request.pk}/approve/", follow=True)

    assert messages_of(response) == [
        f"Not approved: security@example.com filed request {request.pk} and cannot approve it: "
        "another staff member must."
    ]
    assert not ApprovalDecision.objects.exists()
    assert AuditEvent.objects.count() == events
    assert ApprovalRequest.objects.get(pk=request.pk).status == ApprovalStatus.PENDING


@pytest.mark.parametrize("action", ["approve", "reject"])
def test_an_id_that_is_not_a_request_is_a_404(client, security, action):
    as_client(client, security)

    assert client.post(f"{APPROVALS}not-a-uuid/{action}/").status_code == 404
    assert client.post(f"{APPROVALS}{uuid.uuid4()}/{action}/").status_code == 404
    assert not ApprovalDecision.objects.exists()


def test_the_approvals_page_needs_csrf(security, security2):
    from django.test import Client

    request = file_maintenance(security)
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(security2)

    assert strict.post(f"{APPROVALS}{request.pk}/approve/").status_code == 403
    assert ApprovalRequest.objects.get(pk=request.pk).status == ApprovalStatus.PENDING


def test_maintenance_through_the_page_stops_checkout_until_it_is_off(
    client, security, security2, buyer_client: APIClient, publisher: Any
):
    sku: Sku = sku_for_sale(publisher, price=900)
    page = as_client(client, security).get(APPROVALS)
    assert "The runtime switch is <strong>off</strong>" in page.content.decode()
    client.post(f"{APPROVALS}maintenance/", {"kind": "maintenance.on", "reason": "upgrade"})
    request = ApprovalRequest.objects.get(kind="maintenance.on")
    assert not maintenance_on()

    approval_approve(request.pk, by=security2)

    refused = buyer_client.post(
        "/api/v1/checkout", {"sku": sku.slug}, format="json", HTTP_IDEMPOTENCY_KEY="k-1"
    )
    assert refused.status_code == 503
    assert refused.json()["code"] == "maintenance"

    client.post(f"{APPROVALS}maintenance/", {"kind": "maintenance.off", "reason": "done"})
    approval_approve(ApprovalRequest.objects.get(kind="maintenance.off").pk, by=security2)

    assert not maintenance_on()
    answer = buyer_client.post(
        "/api/v1/checkout", {"sku": sku.slug}, format="json", HTTP_IDEMPOTENCY_KEY="k-2"
    )
    assert answer.status_code == 201, answer.content


def test_the_environment_still_forces_maintenance_on(settings, security, security2):
    settings.MAINTENANCE_MODE = True
    assert maintenance_on()
    request = file_maintenance(security)
    approval_approve(request.pk, by=security2)
    off = file_maintenance(security, "maintenance.off")

    assert "MAINTENANCE_MODE=1 in the environment still keeps it on" in off.summary
    approval_approve(off.pk, by=security2)
    assert maintenance_on()


def test_the_switch_is_read_through_the_cache(security, security2, django_assert_num_queries):
    maintenance_on()
    with django_assert_num_queries(0):
        for _ in range(5):
            assert not maintenance_on()
    approval_approve(file_maintenance(security).pk, by=security2)
    assert maintenance_on()  # the change retired the cached value


# --- manage.py approvals -------------------------------------------------------------------------


def approvals_command(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("approvals", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_the_command_lists_approves_and_rejects(security, security2):
    request = file_maintenance(security)

    listed, _ = approvals_command("list")
    assert listed.startswith(f"{request.pk}\tmaintenance.on\tsecurity@example.com\t")
    assert "\t0/1\tpending\tTurn maintenance mode on" in listed

    out, err = approvals_command("approve", str(request.pk), "--as", security2.email)
    assert out == f"{request.pk}\tapplied\n"
    assert "Approved and applied" in err
    assert maintenance_on()
    assert approvals_command("list")[0] == ""
    assert str(request.pk) in approvals_command("list", "--all")[0]

    off = file_maintenance(security, "maintenance.off")
    out, _ = approvals_command("reject", str(off.pk), "--as", security2.email, "--reason", "no")
    assert out == f"{off.pk}\trejected\n"


@pytest.mark.parametrize(
    ("who", "message"),
    [
        ("security@example.com", "cannot approve it: another staff member must"),
        ("finance@example.com", "it takes an active staff member in the role Security"),
        ("nobody@example.com", "'nobody@example.com' is not an active staff account"),
    ],
)
def test_the_command_exits_non_zero_with_the_reason_and_changes_nothing(security, who, message):
    _staff("finance@example.com", FINANCE)
    request = file_maintenance(security)
    events = AuditEvent.objects.count()

    with pytest.raises(CommandError, match=message):
        approvals_command("approve", str(request.pk), "--as", who)

    assert not ApprovalDecision.objects.exists()
    assert AuditEvent.objects.count() == events
    assert ApprovalRequest.objects.get(pk=request.pk).status == ApprovalStatus.PENDING


def test_the_command_refuses_an_unknown_request(security2):
    with pytest.raises(CommandError, match="There is no approval request nope"):
        approvals_command("approve", "nope", "--as", security2.email)
