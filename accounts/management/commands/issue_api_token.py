from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from accounts.services import api_token_issue
from marketplace.actors import Actor
from marketplace.exceptions import ApplicationError


class Command(BaseCommand):
    help = "Issues an API token for EMAIL (creating the buyer if needed) and prints only the token."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("email")
        parser.add_argument("--name", default="", help="A label for the token.")
        parser.add_argument(
            "--expires-days", type=int, default=None, help="Days until the token expires."
        )

    def handle(
        self, *args: Any, email: str, name: str, expires_days: int | None, **kw: Any
    ) -> None:
        if expires_days is not None and expires_days <= 0:
            raise CommandError("--expires-days must be a positive number of days.")
        expires_at = timezone.now() + timedelta(days=expires_days) if expires_days else None
        try:
            _, token = api_token_issue(
                email=email,
                name=name,
                expires_at=expires_at,
                actor=Actor.system("issue_api_token"),
            )
        except ApplicationError as exc:
            raise CommandError(exc.detail) from exc
        self.stdout.write(token)
