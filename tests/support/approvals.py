"""Two-person approval in tests: a second staff member of the role approves what a test filed
(accounts.approval_services), as a colleague would on the Pending approvals page."""

import uuid

from accounts.approval_services import approval_approve
from accounts.models import ApprovalRequest
from marketplace.models import User
from marketplace.roles import SECURITY


def second_person(role: str = SECURITY) -> User:
    from tests.conftest import _staff

    return _staff(f"approver-{uuid.uuid4().hex[:8]}@example.com", role)


def approved(
    request_id: object, *, by: User | None = None, role: str = SECURITY
) -> ApprovalRequest:
    """Approves the request as `by` (a new staff member of `role` when None); answers it."""
    return approval_approve(request_id, by=by or second_person(role))


def rotated(purpose: str = "license") -> ApprovalRequest:
    """`rotate_signer --purpose PURPOSE` filed by one Security member and approved by another;
    answers the request (applied, or failed with its error)."""
    import io

    from django.core.management import call_command

    requester = second_person()
    out = io.StringIO()
    call_command(
        "rotate_signer",
        "--purpose",
        purpose,
        "--as",
        requester.email,
        "--reason",
        "rotation",
        stdout=out,
        stderr=io.StringIO(),
    )
    request = approved(out.getvalue().strip())
    request.refresh_from_db()
    return request
