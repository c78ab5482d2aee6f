from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.approval_services import (
    approval_approve,
    approval_reject,
    approval_staff,
    command_origin,
)
from accounts.models import ApprovalDecisionKind, ApprovalRequest, ApprovalStatus
from audit.chain import format_time
from marketplace.exceptions import ApplicationError


class Command(BaseCommand):
    help = (
        "Two-person approvals for operators without a browser: `list [--all]` shows the "
        "pending requests (tab-separated: id, kind, requester, expires, approvals, summary); "
        "`approve ID --as EMAIL [--note TEXT]` and `reject ID --as EMAIL --reason TEXT` decide "
        "one. A refusal exits non-zero with its reason and changes nothing. `--as` is taken on "
        "the operator's word: the audit log records the decision as made through this command, "
        "with the OS user and host that ran it."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        listing = sub.add_parser("list", help="Pending requests (all of them with --all).")
        listing.add_argument("--all", action="store_true", help="Every request, newest first.")
        for name in ("approve", "reject"):
            decide = sub.add_parser(name, help=f"{name.capitalize()} a request.")
            decide.add_argument("id", help="The request's id, as `list` shows it.")
            decide.add_argument(
                "--as", dest="by", required=True, metavar="EMAIL", help="Who decides."
            )
            if name == "approve":
                decide.add_argument("--note", default="", help="Kept with the decision.")
            else:
                decide.add_argument("--reason", required=True, help="Why it is rejected.")

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        if action == "list":
            self._list(every=options["all"])
            return
        try:
            by = approval_staff(options["by"])
            if action == "approve":
                request = approval_approve(
                    options["id"], by=by, note=options["note"], via=command_origin()
                )
            else:
                request = approval_reject(
                    options["id"], by=by, reason=options["reason"], via=command_origin()
                )
        except ApplicationError as exc:
            raise CommandError(f"Refused, nothing changed: {exc.detail}") from exc
        if request.status == ApprovalStatus.APPLIED:
            self.stderr.write(f"Approved and applied: {request.summary}")
        elif request.status == ApprovalStatus.FAILED:
            raise CommandError(f"Approved, but applying it failed: {request.error}")
        elif request.status == ApprovalStatus.REJECTED:
            self.stderr.write("Rejected: nothing will change.")
        else:
            self.stderr.write("Approved; it waits for more approvals.")
        self.stdout.write(f"{request.pk}\t{request.status}")

    def _list(self, *, every: bool) -> None:
        requests = ApprovalRequest.objects.select_related("requested_by").order_by("requested_at")
        if not every:
            requests = requests.filter(status=ApprovalStatus.PENDING)
        for request in requests:
            approvals = request.decisions.filter(decision=ApprovalDecisionKind.APPROVE).count()
            self.stdout.write(
                "\t".join(
                    [
                        str(request.pk),
                        request.kind,
                        request.requested_by.email,
                        format_time(request.expires_at),
                        f"{approvals}/{request.approvals_needed}",
                        request.status,
                        request.summary,
                    ]
                )
            )
