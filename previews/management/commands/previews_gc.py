from typing import Any

from django.core.management.base import BaseCommand

from previews.services import previews_gc


class Command(BaseCommand):
    help = (
        "Runs the preview garbage collector now (what the hourly beat task runs): ends expired "
        "and stuck sessions, tears down what lost its teardown, and tears down every sandbox a "
        "provisioner runs that no session owns (leaked, audited `preview.leaked_torn_down`). "
        "Prints the counts on one line (expired, stuck, exited, torn_down, leaked) and each "
        "leaked environment id on stderr. Safe to run at any time, on any host."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        result = previews_gc()
        for environment_id in result.leaked_ids:
            self.stderr.write(f"leaked sandbox torn down: {environment_id}")
        self.stdout.write(" ".join(f"{name}={count}" for name, count in result.as_dict().items()))
