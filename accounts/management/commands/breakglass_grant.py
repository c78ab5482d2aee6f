from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.approval_services import approval_next_step, approval_staff
from accounts.breakglass import breakglass_grant_request
from marketplace.exceptions import ApplicationError


class Command(BaseCommand):
    help = (
        "Files a break-glass password login for the staff account EMAIL, for at most --hours "
        "(MARKETPLACE_BREAKGLASS_MAX_HOURS) from its approval, and prints the password once "
        "(only its hash is kept). Nothing works until another Security member approves the "
        "request (`approvals approve ID --as EMAIL`); every use is recorded."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("email", help="The staff account that will sign in with it.")
        parser.add_argument("--hours", type=int, required=True, help="How long, once approved.")
        parser.add_argument("--reason", required=True, help="Why (shown to the approver, kept).")
        parser.add_argument(
            "--as",
            dest="requester",
            required=True,
            metavar="EMAIL",
            help="The Security staff member asking for it.",
        )

    def handle(
        self, *args: Any, email: str, hours: int, reason: str, requester: str, **options: Any
    ) -> None:
        try:
            grant, request, password = breakglass_grant_request(
                email=email,
                hours=hours,
                reason=reason,
                requested_by=approval_staff(requester),
            )
        except ApplicationError as exc:
            raise CommandError(f"Nothing filed: {exc.detail}") from exc
        self.stderr.write(
            f"Break-glass grant {grant.pk} for {grant.user.email}. {approval_next_step(request)}"
        )
        self.stderr.write("The password, shown this once (it is not kept):")
        self.stdout.write(password)
