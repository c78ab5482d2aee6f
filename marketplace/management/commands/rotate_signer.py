from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from audit.services import Actor
from marketplace.keystore import signing_key_rotate
from marketplace.models import SigningKeyPurpose


class Command(BaseCommand):
    help = (
        "Makes a new active signing key and retires the previous one, which goes on verifying "
        "what it signed. Prints the new key id."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--purpose",
            choices=SigningKeyPurpose.values,
            default=SigningKeyPurpose.LICENSE,
            help="Which signer to rotate (default: license).",
        )

    def handle(self, *args: Any, purpose: str, **options: Any) -> None:
        key, retired = signing_key_rotate(
            purpose=SigningKeyPurpose(purpose), actor=Actor.system("rotate_signer")
        )
        if retired is not None:
            self.stderr.write(f"Retired {retired.kid}; it still verifies what it signed.")
        self.stdout.write(key.kid)
