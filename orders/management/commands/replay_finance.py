from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from marketplace.actors import Actor
from orders.models import FinancePosting, PostingStatus
from orders.services import finance_replay


class Command(BaseCommand):
    help = (
        "Sends every ledger entry still waiting for Finance now, whatever its backoff, and "
        "releases the deliveries Finance acknowledges. Prints how many postings ended in each "
        "state; exits 1 while some still wait for Finance or Finance rejected some."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--include-rejected",
            action="store_true",
            help="Also put postings Finance rejected back in the queue (after fixing the cause).",
        )

    def handle(self, *args: Any, include_rejected: bool, **options: Any) -> None:
        results = finance_replay(
            actor=Actor.system("replay_finance"), include_rejected=include_rejected
        )
        counts = {status: results.get(status, 0) for status in PostingStatus.values}
        self.stdout.write(
            f"Sent {sum(results.values())} posting(s): "
            + ", ".join(f"{counts[status]} {status}" for status in PostingStatus.values)
        )
        if counts[PostingStatus.PENDING]:
            raise CommandError(
                f"{counts[PostingStatus.PENDING]} posting(s) still wait for Finance (unreachable "
                "or failing); they are retried with backoff. See each posting's last error."
            )
        rejected = FinancePosting.objects.filter(status=PostingStatus.REJECTED).count()
        if rejected:
            hint = (
                "see their last error, fix the cause and run again"
                if include_rejected
                else "see their last error, fix the cause and run with --include-rejected"
            )
            raise CommandError(f"Finance rejected {rejected} posting(s); {hint}.")
