import time
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from audit.sealer import SealConflict, seal_all, seal_pending, seals_later


class Command(BaseCommand):
    help = (
        "Seals the committed audit events that are not sealed yet and prints how many. With "
        "--loop, goes on sealing as events commit, a standing sealer beside (or instead of) "
        "the Celery task. Safe beside other sealers: one holds the seal lock at a time."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--loop", action="store_true", help="Keep sealing until stopped.")
        parser.add_argument(
            "--interval",
            type=float,
            default=0.05,
            metavar="SECONDS",
            help="With --loop: how long to wait after finding nothing to seal (default 0.05).",
        )

    def handle(self, *args: Any, loop: bool, interval: float, **options: Any) -> None:
        if not seals_later():
            self.stdout.write("Nothing to do: on this database appends seal their own events.")
            return
        if not loop:
            self.stdout.write(f"Sealed {seal_all()} event(s).")
            return
        while True:
            try:
                batch = seal_pending()
            except SealConflict:
                continue
            if not batch.full:
                time.sleep(interval)
