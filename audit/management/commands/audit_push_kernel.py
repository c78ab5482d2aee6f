from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from audit.chain import format_time
from audit.fanout import KernelCursorState, KernelPushFailed, kernel_cursor_state, kernel_push_now


class Command(BaseCommand):
    help = (
        "Pushes the audit events the Kernel has not acknowledged, now, whatever the backoff of "
        "earlier failures, and prints how far the Kernel has acknowledged the chain. Exits 1 "
        "with the Kernel's error if it still fails (the failure is recorded on the cursor)."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.KERNEL_URL:
            self.stdout.write(
                "No Kernel is configured (MARKETPLACE_KERNEL_URL is empty): the local backend "
                "keeps no copy of the chain, so there is nothing to push."
            )
            self._print(kernel_cursor_state())
            return
        try:
            state = kernel_push_now()
        except KernelPushFailed as exc:
            self._print(kernel_cursor_state())
            raise CommandError(
                f"The Kernel did not take the events: {exc}. The worker retries on its own; "
                "run this command again once the Kernel is back."
            ) from None
        self._print(state)

    def _print(self, state: KernelCursorState) -> None:
        acknowledged_at = format_time(state.acknowledged_at) if state.acknowledged_at else "never"
        self.stdout.write(
            f"Kernel acknowledged through #{state.acknowledged_sequence} (at {acknowledged_at}); "
            f"chain head #{state.head_sequence}; backlog {state.backlog} event(s)."
        )
        if state.attempts:
            last = format_time(state.last_attempt_at) if state.last_attempt_at else "?"
            self.stdout.write(
                f"Failed attempts since the last acknowledgement: {state.attempts}, the last at "
                f"{last}: {state.last_error}"
            )
