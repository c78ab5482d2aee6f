from typing import Any

from django.core.management.base import BaseCommand

from audit.checkpoints import checkpoint_create


class Command(BaseCommand):
    help = "Signs the audit chain's head with the audit key (what the beat task does)."

    def handle(self, *args: Any, **options: Any) -> None:
        checkpoint = checkpoint_create()
        if checkpoint is None:
            self.stdout.write("Nothing new to sign: the last event already has a checkpoint.")
            return
        self.stdout.write(
            f"Signed event {checkpoint.sequence} ({checkpoint.hash}) with {checkpoint.key_id}."
        )
