from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.signing_keys import signing_key_revoke
from marketplace.actors import Actor
from marketplace.models import SigningKey, SigningKeyStatus


class Command(BaseCommand):
    help = (
        "Revokes a signing key by its kid: what it signed no longer verifies and it leaves the "
        "JWK Set. A reason is required and recorded. A revoked active key is replaced by a new "
        "one at the next signature (or run rotate_signer). A key in KMS or behind the signing "
        "proxy is not deleted there: disable it in that backend too."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("kid", help="The key id, as the JWK Set and the admin show it.")
        parser.add_argument("--reason", required=True, help="Why (kept in the audit log).")

    def handle(self, *args: Any, kid: str, reason: str, **options: Any) -> None:
        reason = reason.strip()
        if not reason:
            raise CommandError("--reason must say why the key is revoked.")
        if len(reason) > 500:
            raise CommandError("--reason takes at most 500 characters.")
        status = SigningKey.objects.filter(kid=kid).values_list("status", flat=True).first()
        if status is None:
            raise CommandError(f"No signing key has the kid {kid!r}.")
        key = signing_key_revoke(kid=kid, reason=reason, actor=Actor.system("revoke_signer"))
        was = " already" if status == SigningKeyStatus.REVOKED else ""
        self.stderr.write(f"{key.kid} ({key.purpose}, {key.backend}) was{was} revoked.")
        self.stdout.write(key.kid)
