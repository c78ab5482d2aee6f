import dataclasses
import json
from datetime import UTC, datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from marketplace.finance import FinanceUnavailable
from orders.services import reconciliation_report


def _since(value: str) -> datetime:
    """A date (midnight UTC) or a date and time (UTC unless it carries an offset)."""
    moment = parse_datetime(value)
    if moment is None:
        day = parse_date(value)
        if day is None:
            raise ValueError(value)
        return datetime(day.year, day.month, day.day, tzinfo=UTC)
    return moment.replace(tzinfo=UTC) if timezone.is_naive(moment) else moment


class Command(BaseCommand):
    help = (
        "Compares every paid order's total (amount less refunds) with what Finance's ledger "
        "holds for it and lists the orders that differ, with the postings still on their way. "
        "Exits 1 when totals differ for a reason other than postings awaiting Finance, 2 when "
        "Finance cannot be asked."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--since",
            metavar="ISO",
            help="Only orders created at or after this time (ISO 8601, UTC when no offset).",
        )
        parser.add_argument(
            "--json", dest="as_json", action="store_true", help="One JSON document on stdout."
        )

    def handle(self, *args: Any, since: str | None, as_json: bool, **options: Any) -> None:
        try:
            start = _since(since) if since else None
        except ValueError:
            raise CommandError(f"--since {since!r} is not an ISO 8601 date or time.") from None
        try:
            rows = reconciliation_report(since=start)
        except FinanceUnavailable as exc:
            raise CommandError(f"Finance could not be asked: {exc}", returncode=2) from exc
        differing = [row for row in rows if not row.awaiting_finance]
        awaiting = len(rows) - len(differing)
        if as_json:
            self.stdout.write(
                json.dumps(
                    {
                        "since": start.isoformat() if start else None,
                        "differences": len(differing),
                        "awaiting_finance": awaiting,
                        "orders": [dataclasses.asdict(row) for row in rows],
                    }
                )
            )
        else:
            self._print_table(rows)
            self.stdout.write(
                f"{len(differing)} order(s) differ from the ledger, {awaiting} await Finance."
            )
        if differing:
            raise CommandError(
                f"{len(differing)} order(s) differ from Finance's ledger.", returncode=1
            )

    def _print_table(self, rows: list[Any]) -> None:
        if not rows:
            return
        header = ("order", "status", "expected", "ledger", "pending", "rejected", "problem")
        lines = [header] + [
            (
                row.order_id,
                row.status,
                f"{row.expected} {row.currency}",
                str(row.ledger),
                str(row.pending_postings),
                str(row.rejected_postings),
                row.problem,
            )
            for row in rows
        ]
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        for line in lines:
            self.stdout.write(
                "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
            )
