from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.chain import format_time
from audit.exports import (
    ExportError,
    digest_path_of,
    export_write,
    period_resolve,
    previous_digest_for,
)
from marketplace.keystore import KeyStoreError


def _moment(value: str, option: str) -> datetime:
    """A date (midnight UTC) or an ISO 8601 date-time; without an offset it is UTC."""
    try:
        if len(value) == 10:
            return datetime.combine(date.fromisoformat(value), datetime.min.time(), tzinfo=UTC)
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise CommandError(
            f"{option} {value!r} is not an ISO 8601 date or date-time "
            "(e.g. 2025-03-01 or 2025-03-01T12:00:00Z)."
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _sentence(message: str) -> str:
    message = message[:1].upper() + message[1:]
    return message if message.endswith(".") else message + "."


class Command(BaseCommand):
    help = (
        "Exports the audit events of [--from, --to) to FILE as gzip JSON Lines, with a digest "
        "signed by the audit key in FILE.digest.json. The digest names the digest of the "
        "registered daily export that ends exactly at --from as its predecessor (null when "
        "there is none). Check it with `audit_verify --export FILE`."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--from", dest="start", required=True, metavar="ISO", help="Start (included)."
        )
        parser.add_argument(
            "--to",
            dest="end",
            required=True,
            metavar="ISO",
            help="End (excluded), not later than now.",
        )
        parser.add_argument(
            "--out", required=True, type=Path, metavar="FILE", help="A file that does not exist."
        )

    def handle(self, *args: Any, start: str, end: str, out: Path, **options: Any) -> None:
        start_at, end_at = _moment(start, "--from"), _moment(end, "--to")
        if start_at >= end_at:
            raise CommandError(
                f"--from ({format_time(start_at)}) must be before --to ({format_time(end_at)})."
            )
        if not out.parent.is_dir():
            raise CommandError(f"The folder of --out, {out.parent}, does not exist.")
        for target in (out, digest_path_of(out)):
            if target.exists():
                raise CommandError(f"{target} already exists; exports are never overwritten.")
        try:
            period = period_resolve(start=start_at, end=end_at)
            if period.event_count == 0:
                raise CommandError(
                    f"No audit events between {format_time(start_at)} and {format_time(end_at)}: "
                    "nothing to export (the nightly export still records empty days)."
                )
            result = export_write(
                start=start_at,
                end=end_at,
                out=out,
                previous_digest_sha256=previous_digest_for(start_at),
            )
        except (ExportError, KeyStoreError) as exc:
            raise CommandError(_sentence(str(exc))) from None
        previous = result.digest["previous_digest_sha256"]
        self.stdout.write(
            f"Exported {result.event_count} event(s), #{result.first_sequence} to "
            f"#{result.last_sequence}, to {result.path}\n"
            f"  file sha256 {result.file_sha256} ({result.file_size} bytes)\n"
            f"  digest {result.digest_path} (sha256 {result.digest_sha256}, "
            f"key {result.digest['key_id']})\n"
            f"  previous digest {previous or 'none: no daily export ends at --from'}"
        )
