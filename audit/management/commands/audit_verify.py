import itertools
import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.chain import ExportReport, digest_chain_problem, verify_export
from marketplace.jwk import PublicKey, public_keys_from_jwks


class Command(BaseCommand):
    help = (
        "Checks the audit chain in the database, the checkpoints' chain and signatures, and the "
        "database against its witnesses (the audit bucket's checkpoint copies and newest export "
        "digest, the Kernel's copy), and prints the window no witness has seen; with --export, "
        "checks export files against their digests instead (offline with --jwks). Exits 1 and "
        "names the first bad sequence number and why."
    )
    # Checking an export must work with no database at hand: no system checks either.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--export",
            action="append",
            type=Path,
            default=[],
            metavar="FILE",
            help="An export (gzip JSON Lines) with FILE.digest.json beside it. Repeat it for "
            "consecutive exports, to check the digest chain between them too.",
        )
        parser.add_argument(
            "--jwks",
            type=Path,
            metavar="FILE",
            help="Take the public keys from this JWK Set file instead of the key store.",
        )
        parser.add_argument(
            "--no-witnesses",
            action="store_true",
            help="Check the database alone, without comparing it with the checkpoint copies "
            "and export digests in the audit bucket and the Kernel's copy.",
        )

    def handle(
        self,
        *args: Any,
        export: list[Path],
        jwks: Path | None,
        no_witnesses: bool,
        **options: Any,
    ) -> None:
        keys = self._keys_from_file(jwks) if jwks is not None else None
        if export:
            self._verify_exports(export, keys)
        else:
            self._verify_database(keys, no_witnesses)

    def _keys_from_file(self, path: Path) -> dict[str, PublicKey]:
        try:
            document = json.loads(path.read_bytes())
            return public_keys_from_jwks(document)
        except FileNotFoundError:
            raise CommandError(f"{path} does not exist.") from None
        except OSError as exc:
            raise CommandError(f"{path} cannot be read: {exc.strerror}.") from None
        except ValueError as exc:
            raise CommandError(f"{path} is not a usable JWK Set: {exc}.") from None

    def _verify_database(self, keys: dict[str, PublicKey] | None, no_witnesses: bool) -> None:
        from audit.verify import chain_verify

        report = chain_verify(keys=keys, witnesses=[] if no_witnesses else None)
        for note in report.notes:
            self.stderr.write(f"Note: {note}")
        if not report.ok:
            raise CommandError(f"The audit chain does not verify: {report.summary()}")
        self.stdout.write(report.summary())
        for witness in report.witnesses:
            self.stdout.write(f"OK: {witness.name} (event {witness.sequence}) matches")
        if not no_witnesses:
            self.stdout.write(f"Unwitnessed: {report.window()}")

    def _verify_exports(self, paths: list[Path], keys: dict[str, PublicKey] | None) -> None:
        if keys is None:
            from marketplace.keystore import public_keys_from_store
            from marketplace.models import SigningKeyPurpose

            keys = public_keys_from_store(purpose=SigningKeyPurpose.AUDIT)
        reports: list[ExportReport] = []
        for path in paths:
            report = verify_export(path, keys)
            if not report.ok:
                raise CommandError(f"{path} does not verify: {report.failure}")
            reports.append(report)
        reports.sort(key=lambda report: report.digest["period_start"] if report.digest else "")
        for previous, current in itertools.pairwise(reports):
            problem = digest_chain_problem(previous, current)
            if problem is not None:
                raise CommandError(f"{current.export} does not verify: {problem}")
        for report in reports:
            digest = report.digest or {}
            self.stdout.write(
                f"OK: {report.export} holds {report.events} event(s) "
                f"({digest.get('period_start')} to {digest.get('period_end')}), "
                f"signed by {digest.get('key_id')}"
            )
        if len(reports) > 1:
            self.stdout.write(f"OK: the digest chain of {len(reports)} exports is unbroken")
