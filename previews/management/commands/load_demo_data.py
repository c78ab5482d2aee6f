import hashlib
import os
import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction

from accounts.services import staff_account_ensure
from catalog.demo import load_catalog_demo
from marketplace.actors import Actor
from marketplace.models import User
from marketplace.roles import CONTENT_OPS, roles_sync
from previews.demo import load_previews_demo

ACTOR = Actor.system("load_demo_data")


class Command(BaseCommand):
    help = (
        "Loads demo partners, categories and SKUs (with artifacts, signed manifests, royalty "
        "splits and preview material) and a staff account, whose credentials it prints. Safe "
        "to run again: the staff password is kept unless --staff-password sets another."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--staff-email", default="admin@marketplace.test")
        parser.add_argument(
            "--staff-password",
            default=None,
            help="The staff account's password; by default a random one the first time, "
            "kept on later runs.",
        )

    def handle(self, *args: Any, staff_email: str, staff_password: str | None, **kw: Any) -> None:
        self.stdout.write("Loading the demo catalog…")
        result = load_catalog_demo(
            keys_dir=settings.DATA_DIR / "demo-partner-keys",
            actor=ACTOR,
            log=lambda line: self.stdout.write(line) if kw["verbosity"] > 1 else None,
        )
        self.stdout.write(
            f"  {result.partners} partners, {result.categories} categories, "
            f"{result.skus_created} SKUs created, {result.skus_active} on sale"
        )
        self.stdout.write(f"  partners' demo signing keys: {result.keys_dir}")
        previews = load_previews_demo(actor=ACTOR)
        self.stdout.write(
            f"  previews: a sandbox for {', '.join(previews.sandboxes) or 'no SKU'}, "
            f"samples for {', '.join(previews.samples) or 'no SKU'}"
        )

        # The password the demo chose is kept beside the demo data, so that the next run
        # prints it again instead of replacing it (a demo account: production has none).
        account = hashlib.sha256(staff_email.lower().encode()).hexdigest()[:24]
        remembered = Path(settings.DATA_DIR) / "demo-staff-passwords" / account
        password = staff_password
        if password is None and not User.objects.filter(email__iexact=staff_email).exists():
            password = secrets.token_urlsafe(12)
        with transaction.atomic():
            roles_sync()
            staff, _ = staff_account_ensure(
                email=staff_email, password=password, roles=[CONTENT_OPS], actor=ACTOR
            )
        if password is not None:
            remembered.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(remembered, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(password)
        elif remembered.is_file() and staff.check_password(remembered.read_text()):
            password = remembered.read_text()
        if password is None:
            self.stdout.write(
                self.style.SUCCESS(f"Staff account: {staff_email}")
                + " (its password was changed since the demo set it; --staff-password sets one)"
            )
        else:
            self.stdout.write(self.style.SUCCESS(f"Staff account: {staff_email} / {password}"))
