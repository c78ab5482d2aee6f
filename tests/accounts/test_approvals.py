"""Two-person approval (accounts.approval_services): a request applies once enough distinct
people agreed; every refusal says why and changes nothing; expiry; apply failures; concurrent
approvals apply once (PostgreSQL)."""

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.utils import timezone

from accounts import approvals
from accounts.approval_services import (
    approval_approve,
    approval_reject,
    approval_request,
    approvals_expire,
)
from accounts.approvals import (
    ApprovalAlreadyDecided,
    ApprovalBeneficiary,
    ApprovalClosed,
    ApprovalExpired,
    ApprovalOwnRequest,
    ApprovalRefused,
    ApprovalRoleMissing,
)
from accounts.breakglass import breakglass_grant_request
from accounts.models import ApprovalDecision, ApprovalRequest, ApprovalStatus
from accounts.services import Access, role_grant_params
from accounts.tasks import approvals_expire as approvals_expire_task
from audit.models import AuditEvent
from marketplace.exceptions import Conflict, InvalidInput
from marketplace.maintenance import maintenance_on
from marketplace.models import User
from marketplace.roles import FINANCE, SECURITY, SUPPORT
from tests.conftest import _staff
from tests.support import pg
from tests.support.audit import sealed_events

pytestmark = pytest.mark.django_db


@pytest.fixture
def security() -> User:
    return _staff("security@example.com", SECURITY)


@pytest.fixture
def security2() -> User:
    return _staff("security2@example.com", SECURITY)


@pytest.fixture
def security3() -> User:
    return _staff("security3@example.com", SECURITY)


def file_maintenance_on(by: User) -> ApprovalRequest:
    return approval_request(
        kind="maintenance.on", params={}, reason="database upgrade", requested_by=by
    )


def state(request: ApprovalRequest) -> tuple[Any, ...]:
    """What a refused step could have written."""
    request = ApprovalRequest.objects.get(pk=request.pk)
    return (
        request.status,
        request.applied_at,
        ApprovalDecision.objects.count(),
        AuditEvent.objects.count(),
        maintenance_on(),
    )


def actions_of(request: ApprovalRequest) -> list[tuple[str, str]]:
    return list(
        sealed_events(subject_type="approval", subject_id=str(request.pk)).values_list(
            "action", "actor_id"
        )
    )


def test_a_request_applies_with_the_second_persons_approval_and_is_audited(security, security2):
    request = file_maintenance_on(security)

    assert (request.status, request.threshold, request.approvals_needed) == ("pending", 2, 1)
    assert not maintenance_on()
    assert "Turn maintenance mode on" in request.summary

    approval_approve(request.pk, by=security2, note="ok, window agreed")

    request.refresh_from_db()
    assert request.status == ApprovalStatus.APPLIED
    assert request.applied_at is not None
    assert request.outcome == {"maintenance": True, "changed": True}
    assert maintenance_on()
    assert actions_of(request) == [
        ("approval.requested", str(security.uuid)),
        ("approval.approved", str(security2.uuid)),
        ("approval.applied", str(security2.uuid)),
    ]
    [switched] = sealed_events(action="maintenance.on")
    assert (switched.actor_type, switched.actor_id) == ("staff", str(security2.uuid))
    requested = sealed_events(action="approval.requested").get()
    assert requested.data["params"] == {}
    assert requested.data["reason"] == "database upgrade"


def test_a_threshold_of_three_takes_two_approvers(settings, security, security2, security3):
    settings.APPROVAL_THRESHOLD = 3
    request = file_maintenance_on(security)

    approval_approve(request.pk, by=security2)
    request.refresh_from_db()
    assert request.status == ApprovalStatus.PENDING
    assert not maintenance_on()

    approval_approve(request.pk, by=security3)
    request.refresh_from_db()
    assert request.status == ApprovalStatus.APPLIED
    assert maintenance_on()


def test_the_threshold_is_the_one_the_request_was_filed_with(settings, security, security2):
    request = file_maintenance_on(security)
    settings.APPROVAL_THRESHOLD = 5

    approval_approve(request.pk, by=security2)

    assert ApprovalRequest.objects.get(pk=request.pk).status == ApprovalStatus.APPLIED


def test_a_threshold_of_one_applies_at_once(settings, security):
    settings.APPROVAL_THRESHOLD = 1

    request = file_maintenance_on(security)

    assert request.status == ApprovalStatus.APPLIED
    assert maintenance_on()


# --- Refusals: each says why and changes nothing -----------------------------------------------


def test_the_requester_cannot_approve_their_own_request(security):
    request = file_maintenance_on(security)
    before = state(request)

    with pytest.raises(ApprovalOwnRequest, match="cannot approve it: another staff member must"):
        approval_approve(request.pk, by=security)

    assert state(request) == before


def test_a_superuser_cannot_approve_their_own_request_either():
    root = User.objects.create_superuser("root@example.com", "x")
    request = file_maintenance_on(root)
    before = state(request)

    with pytest.raises(ApprovalOwnRequest):
        approval_approve(request.pk, by=root)

    assert state(request) == before


def test_someone_without_the_role_cannot_approve(security):
    finance = _staff("finance@example.com", FINANCE)
    buyer = User.objects.create_user(email="buyer@example.com")
    request = file_maintenance_on(security)
    before = state(request)

    for who in (finance, buyer):
        with pytest.raises(ApprovalRoleMissing, match="in the role Security") as refused:
            approval_approve(request.pk, by=who)
        assert refused.value.status == 403

    assert state(request) == before


def test_an_inactive_security_member_cannot_approve(security, security2):
    security2.is_active = False
    security2.save()
    request = file_maintenance_on(security)
    before = state(request)

    with pytest.raises(ApprovalRoleMissing):
        approval_approve(request.pk, by=security2)

    assert state(request) == before


def test_a_superuser_holds_every_role():
    root = User.objects.create_superuser("root@example.com", "x")
    finance = _staff("finance@example.com", FINANCE)
    request = approval_request(kind="maintenance.on", params={}, reason="x", requested_by=root)

    with pytest.raises(ApprovalRoleMissing):
        approval_approve(request.pk, by=finance)
    approval_approve(request.pk, by=User.objects.create_superuser("root2@example.com", "x"))

    assert maintenance_on()


def test_an_approval_after_expiry_is_refused(security, security2):
    request = file_maintenance_on(security)
    ApprovalRequest.objects.filter(pk=request.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    before = state(request)

    with pytest.raises(ApprovalExpired, match=r"expired at .*file a new request"):
        approval_approve(request.pk, by=security2)
    with pytest.raises(ApprovalExpired):
        approval_reject(request.pk, by=security2, reason="too late")

    assert state(request) == before


def test_a_second_decision_by_the_same_person_is_refused(settings, security, security2):
    settings.APPROVAL_THRESHOLD = 3
    request = file_maintenance_on(security)
    approval_approve(request.pk, by=security2)
    before = state(request)

    with pytest.raises(ApprovalAlreadyDecided, match="has already decided"):
        approval_approve(request.pk, by=security2)
    with pytest.raises(ApprovalAlreadyDecided):
        approval_reject(request.pk, by=security2, reason="changed my mind")

    assert state(request) == before


def test_an_applied_request_is_never_applied_again(security, security2, security3):
    request = file_maintenance_on(security)
    approval_approve(request.pk, by=security2)
    before = state(request)

    with pytest.raises(ApprovalClosed, match="is applied: there is nothing left to decide"):
        approval_approve(request.pk, by=security3)

    assert state(request) == before
    assert sealed_events(action="maintenance.on").count() == 1


@pytest.mark.parametrize(
    ("kind", "params", "reason", "message"),
    [
        ("no.such", {}, "x", "'no.such' is not a kind of change that takes an approval"),
        ("maintenance.on", {}, "   ", "Say why the change is needed"),
        ("maintenance.on", {"x": 1.5}, "x", "not plain JSON"),
        ("maintenance.off", {}, "x", "The maintenance switch is off already."),
        ("signing_key.revoke", {"kid": "nope", "reason": "x"}, "x", "No signing key has"),
        ("role.grant", {"user": "nope", "roles": []}, "x", "There is no account nope."),
    ],
)
def test_a_request_that_could_never_apply_is_refused_when_filed(
    security, kind, params, reason, message
):
    events = AuditEvent.objects.count()

    with pytest.raises(InvalidInput, match=message):
        approval_request(kind=kind, params=params, reason=reason, requested_by=security)

    assert not ApprovalRequest.objects.exists()
    assert AuditEvent.objects.count() == events


def test_only_someone_holding_the_role_may_file(security):
    finance = _staff("finance@example.com", FINANCE)
    events = AuditEvent.objects.count()

    with pytest.raises(ApprovalRoleMissing, match=r"may not file a maintenance\.on request"):
        file_maintenance_on(finance)

    assert not ApprovalRequest.objects.exists()
    assert AuditEvent.objects.count() == events


# --- Reject, withdraw, expire, fail ------------------------------------------------------------


def test_a_rejection_closes_the_request_and_nothing_applies(security, security2, security3):
    request = file_maintenance_on(security)

    with pytest.raises(InvalidInput, match="Say why the request is rejected"):
        approval_reject(request.pk, by=security2, reason=" ")
    approval_reject(request.pk, by=security2, reason="not during the sale")

    request.refresh_from_db()
    assert request.status == ApprovalStatus.REJECTED
    assert not maintenance_on()
    with pytest.raises(ApprovalClosed):
        approval_approve(request.pk, by=security3)
    [event] = sealed_events(action="approval.rejected")
    assert (event.actor_id, event.data["reason"], event.data["withdrawn"]) == (
        str(security2.uuid),
        "not during the sale",
        False,
    )


def test_the_requester_may_withdraw_their_request(security):
    request = file_maintenance_on(security)

    approval_reject(request.pk, by=security, reason="filed by mistake")

    assert ApprovalRequest.objects.get(pk=request.pk).status == ApprovalStatus.REJECTED
    assert sealed_events(action="approval.rejected").get().data["withdrawn"] is True


def test_pending_requests_past_their_expiry_expire_once(security, security2):
    due = file_maintenance_on(security)
    fresh = approval_request(
        kind="signing_key.rotate",
        params={"purpose": "audit"},
        reason="yearly",
        requested_by=security,
    )
    ApprovalRequest.objects.filter(pk=due.pk).update(
        expires_at=timezone.now() - timedelta(minutes=1)
    )

    assert approvals_expire_task.apply().get() == 1
    assert approvals_expire() == 0

    assert ApprovalRequest.objects.get(pk=due.pk).status == ApprovalStatus.EXPIRED
    assert ApprovalRequest.objects.get(pk=fresh.pk).status == ApprovalStatus.PENDING
    [event] = sealed_events(action="approval.expired")
    assert (event.actor_type, event.actor_id, event.subject_id) == (
        "system",
        "approvals_expire",
        str(due.pk),
    )
    with pytest.raises(ApprovalClosed):
        approval_approve(due.pk, by=security2)


def test_the_ttl_is_the_setting(settings, security):
    settings.APPROVAL_TTL_HOURS = 2

    request = file_maintenance_on(security)

    assert request.expires_at - request.requested_at == timedelta(hours=2)


def _fail(params: dict[str, Any], actor: Any) -> None:
    raise InvalidInput("the thing to change is gone")


def _fail_summary(params: dict[str, Any]) -> str:
    return "Fails"


@pytest.fixture
def failing_kind() -> Any:
    approvals.register("test.fails", roles=(SECURITY,), summary=_fail_summary, apply=_fail)
    yield
    approvals._KINDS.pop("test.fails")


@pytest.mark.usefixtures("failing_kind")
def test_a_change_that_fails_to_apply_marks_the_request_failed(security, security2):
    request = approval_request(kind="test.fails", params={}, reason="x", requested_by=security)

    approval_approve(request.pk, by=security2)

    request.refresh_from_db()
    assert (request.status, request.error, request.applied_at) == (
        ApprovalStatus.FAILED,
        "the thing to change is gone",
        None,
    )
    assert ApprovalDecision.objects.filter(request=request).count() == 1
    [event] = sealed_events(action="approval.failed")
    assert (event.actor_id, event.data["error"]) == (
        str(security2.uuid),
        "the thing to change is gone",
    )


def test_refusals_are_conflicts_with_a_reason_code():
    assert issubclass(ApprovalRefused, Conflict)
    assert {
        cls.reason
        for cls in (
            ApprovalOwnRequest,
            ApprovalRoleMissing,
            ApprovalExpired,
            ApprovalAlreadyDecided,
            ApprovalClosed,
        )
    } == {"own_request", "role_missing", "expired", "already_decided", "closed"}


# --- Role grants ---------------------------------------------------------------------------------


def file_grant(user: User, by: User, *, roles: set[str], **flags: bool) -> ApprovalRequest:
    """Files the access `user` has now with `roles` added and `flags` set."""
    now = Access.of(user)
    target = Access(
        now.is_active,
        flags.get("is_staff", now.is_staff),
        flags.get("is_superuser", now.is_superuser),
        now.roles | roles,
    )
    return approval_request(
        kind="role.grant",
        params=role_grant_params(user=user, target=target),
        reason="joins the on-call rota",
        requested_by=by,
    )


def roles_of(user: User) -> set[str]:
    return set(user.groups.values_list("name", flat=True))


def test_a_grant_applies_its_change_not_access_taken_away_after_it_was_filed(security, security2):
    user = _staff("ann@example.com", FINANCE)
    User.objects.filter(pk=user.pk).update(is_superuser=True)
    user.refresh_from_db()
    request = file_grant(user, security, roles={SUPPORT})
    assert request.params == {
        "user": str(user.uuid),
        "roles_added": [SUPPORT],
        "roles_removed": [],
        "flags": {},
    }
    assert request.summary.startswith("Change the access of ann@example.com: adds Support.")

    # Taken away directly while the grant waits.
    User.objects.filter(pk=user.pk).update(is_superuser=False)
    user.groups.remove(Group.objects.get(name=FINANCE))

    approval_approve(request.pk, by=security2)

    user.refresh_from_db()
    assert ApprovalRequest.objects.get(pk=request.pk).status == ApprovalStatus.APPLIED
    assert (user.is_superuser, roles_of(user)) == (False, {SUPPORT})
    [event] = sealed_events(action="account.access_changed")
    assert event.data == {"roles_added": [SUPPORT]}


def test_two_pending_grants_compose(security, security2):
    user = _staff("ann@example.com", SUPPORT)
    first = file_grant(user, security, roles={FINANCE})
    second = file_grant(user, security, roles={SECURITY})

    approval_approve(second.pk, by=security2)
    approval_approve(first.pk, by=security2)

    assert roles_of(user) == {SUPPORT, FINANCE, SECURITY}


def test_the_person_a_grant_is_for_cannot_approve_it(security, security2):
    request = file_grant(security2, security, roles={FINANCE})
    before = state(request)

    with pytest.raises(ApprovalBeneficiary, match=r"changes the access of security2@example\.com"):
        approval_approve(request.pk, by=security2)

    assert state(request) == before
    assert roles_of(security2) == {SECURITY}


def test_the_person_a_breakglass_grant_is_for_cannot_approve_it(security, security2):
    grant, request, _ = breakglass_grant_request(
        email=security2.email, hours=1, reason="SSO outage", requested_by=security
    )
    before = state(request)

    with pytest.raises(ApprovalBeneficiary):
        approval_approve(request.pk, by=security2)

    assert state(request) == before
    grant.refresh_from_db()
    assert grant.active_from is None


@pytest.mark.parametrize("who", ["requester", "approver"])
@pytest.mark.parametrize("loses", ["role", "staff", "active"])
def test_a_request_fails_when_someone_counted_no_longer_holds_the_role(
    settings, security, security2, security3, who, loses
):
    settings.APPROVAL_THRESHOLD = 3
    request = file_maintenance_on(security)
    approval_approve(request.pk, by=security2)
    person = security if who == "requester" else security2
    if loses == "role":
        person.groups.clear()
    else:
        User.objects.filter(pk=person.pk).update(**{f"is_{loses}": False})

    approval_approve(request.pk, by=security3)

    request.refresh_from_db()
    assert request.status == ApprovalStatus.FAILED
    assert request.applied_at is None
    assert request.error.startswith(
        f"The {who} {person.email} is no longer active staff in the role Security"
    )
    assert not maintenance_on()
    [event] = sealed_events(action="approval.failed")
    assert (event.actor_id, event.data["error"]) == (str(security3.uuid), request.error)
    assert not sealed_events(action="maintenance.on").exists()


# --- Concurrency (PostgreSQL) -------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_approvals_at_once_apply_the_request_once():
    security = _staff("security@example.com", SECURITY)
    approvers = [_staff(f"approver{n}@example.com", SECURITY) for n in range(2)]
    request = file_maintenance_on(security)

    threads = [
        pg.in_thread(lambda who=who: approval_approve(request.pk, by=who)) for who in approvers
    ]
    for thread, _ in threads:
        thread.join(timeout=30)

    outcomes = [outcome[0] for _, outcome in threads]
    refused = [o for o in outcomes if isinstance(o, Exception)]
    assert len(refused) == 1, outcomes
    assert isinstance(refused[0], ApprovalClosed)
    request.refresh_from_db()
    assert request.status == ApprovalStatus.APPLIED
    assert ApprovalDecision.objects.filter(request=request).count() == 1
    assert sealed_events(action="approval.applied").count() == 1
    assert sealed_events(action="maintenance.on").count() == 1


# --- Settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("threshold", "refused"), [("1", True), ("2", False), ("3", False)])
def test_production_refuses_a_threshold_below_two(threshold, refused):
    from tests.marketplace.test_settings import PRODUCTION, manage

    result = manage("check", **{**PRODUCTION, "MARKETPLACE_APPROVAL_THRESHOLD": threshold})

    message = "MARKETPLACE_APPROVAL_THRESHOLD: must be at least 2"
    assert (message in result.stderr) is refused
