from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.approval_services import approval_next_step, approval_request, approval_staff
from licensing.approvals import REVOKE
from marketplace.exceptions import ApplicationError


class Command(BaseCommand):
    help = (
        "Files a request to revoke a signing key by its kid: once another Security member "
        "approves it, what the key signed no longer verifies and it leaves the JWK Set. A "
        "reason is required and recorded. A revoked active key is replaced by a new one at the "
        "next signature (or run rotate_signer). A key in KMS or behind the signing proxy is not "
        "deleted there: disable it in that backend too. Prints the request's id."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("kid", help="The key id, as the JWK Set and the admin show it.")
        parser.add_argument("--reason", required=True, help="Why (kept in the audit log).")
        parser.add_argument(
            "--as",
            dest="requester",
            required=True,
            metavar="EMAIL",
            help="The Security staff member asking for it.",
        )

    def handle(self, *args: Any, kid: str, reason: str, requester: str, **options: Any) -> None:
        reason = reason.strip()
        if not reason:
            raise CommandError("--reason must say why the key is revoked.")
        try:
            request = approval_request(
                kind=REVOKE,
                params={"kid": kid, "reason": reason},
                reason=reason,
                requested_by=approval_staff(requester),
            )
        except ApplicationError as exc:
            raise CommandError(f"Nothing filed: {exc.detail}") from exc
        self.stderr.write(f"{request.summary}\n{approval_next_step(request)}")
        self.stdout.write(str(request.pk))
