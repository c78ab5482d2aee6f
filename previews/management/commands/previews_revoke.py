import uuid
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.approval_services import (
    approval_next_step,
    approval_request,
    approval_staff,
    command_origin,
)
from catalog.models import Sku
from marketplace.actors import Actor
from marketplace.exceptions import ApplicationError
from marketplace.models import User
from marketplace.roles import PREVIEW_ACTION_ROLES, may_take_preview_action
from previews.approvals import ISOLATE_ALL
from previews.services import preview_revoke, previews_isolate

COMMAND_ACTOR = Actor.system("previews_revoke")


class Command(BaseCommand):
    help = (
        "Revokes previews, for the runbooks' sandbox leak and breakout: `--session UUID` one "
        "session; `--sku SLUG` isolates a SKU (every open session revoked, new ones paused "
        "until the pause is lifted, unless --no-pause); `--all` files the "
        "`previews.isolate_all` approval request (every SKU), which applies once another "
        "Security member approves it (`approvals approve ID --as EMAIL`), and prints its id. "
        "A revoked link answers 410 `revoked` at once. --reason is required and kept in the "
        "audit log. `--as EMAIL` names the staff member acting (required with --all, taken on "
        "the operator's word); without it a session or SKU is revoked as the command itself."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        target = parser.add_mutually_exclusive_group(required=True)
        target.add_argument("--session", metavar="UUID", help="One session, by its id.")
        target.add_argument("--sku", metavar="SLUG", help="Every open session of one SKU.")
        target.add_argument(
            "--all", action="store_true", help="Every SKU's (asks a second Security member)."
        )
        parser.add_argument("--reason", required=True, help="Why (kept in the audit log).")
        parser.add_argument(
            "--no-pause",
            dest="pause",
            action="store_false",
            help="With --sku or --all: revoke, but go on taking new sessions.",
        )
        parser.add_argument(
            "--as", dest="by", metavar="EMAIL", help="The staff member acting (Security)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        reason = (options["reason"] or "").strip()
        if not reason:
            raise CommandError("--reason must say why (it is kept in the audit log).")
        try:
            if options["all"]:
                self._all(reason, pause=options["pause"], by=options["by"])
            elif options["sku"]:
                self._sku(options["sku"], reason, pause=options["pause"], by=options["by"])
            else:
                self._session(options["session"], reason, by=options["by"])
        except ApplicationError as exc:
            raise CommandError(f"Refused, nothing changed: {exc.detail}") from exc

    def _person(self, email: str | None, action: str) -> User | None:
        if email is None:
            return None
        person = approval_staff(email)
        if not may_take_preview_action(person, action):
            roles = " or ".join(PREVIEW_ACTION_ROLES[action])
            raise CommandError(f"{person.email} may not do this: it takes the role {roles}.")
        return person

    def _all(self, reason: str, *, pause: bool, by: str | None) -> None:
        if by is None:
            raise CommandError(
                "--all files a request another Security member approves: name yourself with "
                "--as EMAIL."
            )
        request = approval_request(
            kind=ISOLATE_ALL,
            params={"reason": reason, "pause": pause},
            reason=reason,
            requested_by=approval_staff(by),
            via=command_origin(),
        )
        self.stderr.write(f"{request.summary}\n{approval_next_step(request)}")
        self.stdout.write(str(request.pk))

    def _sku(self, slug: str, reason: str, *, pause: bool, by: str | None) -> None:
        sku = Sku.objects.filter(slug=slug).first()
        if sku is None:
            raise CommandError(f"There is no SKU {slug!r}.")
        person = self._person(by, "isolate_pool")
        done = previews_isolate(
            sku_id=sku.pk,
            reason=reason,
            actor=Actor.of_user(person) if person else COMMAND_ACTOR,
            pause=pause,
            by=person,
        )
        paused = f"new sessions paused (pause {done.pause.pk})" if done.pause else "not paused"
        self.stderr.write(f"{sku.slug} isolated: {done.revoked} session(s) revoked; {paused}.")
        self.stdout.write(str(done.revoked))

    def _session(self, session_id: str, reason: str, *, by: str | None) -> None:
        try:
            session_uuid = uuid.UUID(session_id)
        except ValueError:
            raise CommandError(f"{session_id!r} is not a session id (a UUID).") from None
        person = self._person(by, "revoke_session")
        session = preview_revoke(
            session_id=session_uuid,
            reason=reason,
            actor=Actor.of_user(person) if person else COMMAND_ACTOR,
        )
        self.stderr.write(f"Session {session.pk}: {session.status} ({session.end_reason}).")
        self.stdout.write(str(session.pk))
