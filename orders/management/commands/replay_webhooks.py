from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from marketplace.actors import Actor
from orders.models import WebhookEvent, WebhookStatus
from orders.services import webhook_event_replay

# What an event may end as and still count as done.
DONE = {WebhookStatus.PROCESSED, WebhookStatus.IGNORED}


class Command(BaseCommand):
    help = (
        "Processes stored payment webhook events again now: those named with --event, or those "
        "failed (--failed) or dead-lettered (--dead); both kinds when neither is given. Prints "
        "each event's result; exits 1 when one is still not processed."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--event",
            action="append",
            default=[],
            metavar="EVENT_ID",
            help="The provider's event id (evt_...); repeat it for several.",
        )
        parser.add_argument("--dead", action="store_true", help="Dead-lettered events.")
        parser.add_argument("--failed", action="store_true", help="Events waiting for a retry.")

    def handle(
        self, *args: Any, event: list[str], dead: bool, failed: bool, **options: Any
    ) -> None:
        events = WebhookEvent.objects.order_by("received_at", "id")
        if event:
            chosen = list(events.filter(event_id__in=event))
            unknown = sorted(set(event) - {e.event_id for e in chosen})
            if unknown:
                raise CommandError(f"No stored event has the id {', '.join(unknown)}.")
        else:
            statuses = [
                status
                for status, wanted in ((WebhookStatus.FAILED, failed), (WebhookStatus.DEAD, dead))
                if wanted or not (failed or dead)
            ]
            chosen = list(events.filter(status__in=statuses))
        if not chosen:
            self.stdout.write("No events to replay.")
            return
        actor = Actor.system("replay_webhooks")
        unfinished = 0
        for stored in chosen:
            was = stored.status
            status = webhook_event_replay(event_pk=stored.pk, actor=actor)
            stored.refresh_from_db()
            # The last line of an error is what went wrong (the rest is where).
            error = (stored.last_error.strip().splitlines() or [""])[-1]
            detail = stored.outcome if status in DONE else error
            self.stdout.write(f"{stored.event_id} {stored.type}: {was} -> {status}: {detail}")
            unfinished += status not in DONE
        if unfinished:
            raise CommandError(
                f"{unfinished} of {len(chosen)} event(s) are still not processed; see their "
                "last error (the admin lists their attempts)."
            )
        self.stdout.write(f"Replayed {len(chosen)} event(s).")
