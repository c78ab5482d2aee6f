from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.approval_services import approval_next_step, approval_request, approval_staff
from licensing.approvals import ROTATE
from marketplace.exceptions import ApplicationError
from marketplace.models import SigningKeyPurpose


class Command(BaseCommand):
    help = (
        "Files a request to make a new active signing key in the configured key store (license "
        "keys: MARKETPLACE_KEYSTORE_BACKEND; audit keys: always local) and retire the previous "
        "one, which goes on verifying what it signed. Nothing changes until another Security "
        "member approves it (`approvals approve ID --as EMAIL`). Prints the request's id."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--purpose",
            choices=SigningKeyPurpose.values,
            default=SigningKeyPurpose.LICENSE,
            help="Which signer to rotate (default: license).",
        )
        parser.add_argument(
            "--as",
            dest="requester",
            required=True,
            metavar="EMAIL",
            help="The Security staff member asking for it.",
        )
        parser.add_argument("--reason", required=True, help="Why (shown to the approvers, kept).")

    def handle(self, *args: Any, purpose: str, requester: str, reason: str, **options: Any) -> None:
        try:
            request = approval_request(
                kind=ROTATE,
                params={"purpose": purpose},
                reason=reason,
                requested_by=approval_staff(requester),
            )
        except ApplicationError as exc:
            raise CommandError(f"Nothing filed: {exc.detail}") from exc
        self.stderr.write(f"{request.summary}\n{approval_next_step(request)}")
        self.stdout.write(str(request.pk))
