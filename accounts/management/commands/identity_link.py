from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.services import identity_link
from marketplace.actors import Actor
from marketplace.exceptions import ApplicationError


class Command(BaseCommand):
    help = (
        "Binds the existing account EMAIL to SUBJECT at the identity provider, so that its "
        "holder's sign-ins reach that account (docs/identity.md)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("email")
        parser.add_argument("subject", help="The person's `sub` at the provider.")
        parser.add_argument(
            "--issuer", default=None, help="The provider (default: MARKETPLACE_OIDC_ISSUER)."
        )

    def handle(self, *args: Any, email: str, subject: str, issuer: str | None, **kw: Any) -> None:
        try:
            identity = identity_link(
                email=email,
                issuer=issuer or settings.OIDC_ISSUER,
                subject=subject,
                actor=Actor.system("identity_link"),
            )
        except ApplicationError as exc:
            raise CommandError(exc.detail) from exc
        self.stdout.write(f"{identity.user.email} is now {identity.subject} at {identity.issuer}.")
