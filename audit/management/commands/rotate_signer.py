from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.signing_keys import signing_key_rotate
from marketplace.actors import Actor
from marketplace.keystore import KeyStoreError, KeyStoreUnavailable
from marketplace.models import SigningKeyPurpose


class Command(BaseCommand):
    help = (
        "Makes a new active signing key in the configured key store (license keys: "
        "MARKETPLACE_KEYSTORE_BACKEND; audit keys: always local) and retires the previous one, "
        "which goes on verifying what it signed. Prints the new key id."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--purpose",
            choices=SigningKeyPurpose.values,
            default=SigningKeyPurpose.LICENSE,
            help="Which signer to rotate (default: license).",
        )

    def handle(self, *args: Any, purpose: str, **options: Any) -> None:
        try:
            key, retired = signing_key_rotate(
                purpose=SigningKeyPurpose(purpose), actor=Actor.system("rotate_signer")
            )
        except KeyStoreUnavailable as exc:
            raise CommandError(
                f"Nothing changed: the key store is unavailable ({exc}). Run it again later."
            ) from exc
        except KeyStoreError as exc:
            raise CommandError(
                f"Nothing changed: the key store refused ({exc}). Backend: "
                f"{settings.KEYSTORE_BACKEND if purpose == SigningKeyPurpose.LICENSE else 'local'}."
            ) from exc
        if retired is not None:
            self.stderr.write(f"Retired {retired.kid}; it still verifies what it signed.")
        self.stderr.write(f"{key.kid}: {key.algorithm}, {key.backend} key store.")
        self.stdout.write(key.kid)
