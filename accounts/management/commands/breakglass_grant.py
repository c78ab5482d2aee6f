from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.approval_services import approval_next_step, approval_staff, command_origin
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
            help="The Security staff member asking for it: the account's owner, who is shown "
            "the password (unless --for-other).",
        )
        parser.add_argument(
            "--for-other",
            action="store_true",
            help="File it for someone else's account: the password is then shown to the "
            "requester, and must reach the account's owner out of band.",
        )

    def handle(
        self,
        *args: Any,
        email: str,
        hours: int,
        reason: str,
        requester: str,
        for_other: bool,
        **options: Any,
    ) -> None:
        try:
            requested_by = approval_staff(requester)
            if not for_other and requested_by.email.lower() != email.strip().lower():
                raise CommandError(
                    f"Nothing filed: the password is shown to the requester, so {requester} "
                    f"may file a grant only for their own account, not {email}; to file it "
                    "for someone else, add --for-other and get the password to them out of band."
                )
            grant, request, password = breakglass_grant_request(
                email=email,
                hours=hours,
                reason=reason,
                requested_by=requested_by,
                via=command_origin(),
            )
        except ApplicationError as exc:
            raise CommandError(f"Nothing filed: {exc.detail}") from exc
        if for_other and grant.user_id != requested_by.pk:
            self.stderr.write(
                f"Warning: this password is for {grant.user.email}, not you. Get it to them "
                "out of band (not by chat or email), and keep no copy."
            )
        self.stderr.write(
            f"Break-glass grant {grant.pk} for {grant.user.email}. {approval_next_step(request)}"
        )
        self.stderr.write("The password, shown this once (it is not kept):")
        self.stdout.write(password)
