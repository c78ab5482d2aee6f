import secrets
from typing import Any

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction

from audit.services import Actor
from marketplace.models import User
from marketplace.roles import CONTENT_OPS, roles_sync


class Command(BaseCommand):
    help = (
        "Loads demo partners, categories and SKUs (with artifacts, signed manifests and royalty "
        "splits) and a staff account, whose credentials it prints. Safe to run again."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--staff-email", default="admin@marketplace.test")
        parser.add_argument(
            "--staff-password",
            default=None,
            help="The staff account's password; by default a fresh random one, printed.",
        )

    def handle(self, *args: Any, staff_email: str, staff_password: str | None, **kw: Any) -> None:
        from catalog.demo import load_catalog_demo

        self.stdout.write("Loading the demo catalog…")
        result = load_catalog_demo(
            keys_dir=settings.DATA_DIR / "demo-partner-keys",
            actor=Actor.system("load_demo_data"),
            log=lambda line: self.stdout.write(line) if kw["verbosity"] > 1 else None,
        )
        self.stdout.write(
            f"  {result.partners} partners, {result.categories} categories, "
            f"{result.skus_created} SKUs created, {result.skus_active} on sale"
        )
        self.stdout.write(f"  partners' demo signing keys: {result.keys_dir}")

        password = staff_password or secrets.token_urlsafe(12)
        with transaction.atomic():
            roles_sync()
            staff = User.objects.filter(email__iexact=staff_email).first() or User(
                email=staff_email
            )
            staff.is_staff = True
            staff.is_superuser = True
            staff.set_password(password)
            staff.save()
            staff.groups.add(*Group.objects.filter(name=CONTENT_OPS))
        self.stdout.write(self.style.SUCCESS(f"Staff account: {staff_email} / {password}"))
