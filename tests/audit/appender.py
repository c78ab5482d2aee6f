"""Run as a process by test_concurrent_appends: waits for the start signal, then appends
COUNT events, each in its own transaction, as fast as it can."""

import os
import sys
import time

import django


def main() -> None:
    name, count, start_at = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.test")
    django.setup()
    from django.db import transaction

    from audit.services import audit_append
    from marketplace.actors import Actor

    time.sleep(max(0.0, start_at - time.time()))
    for index in range(count):
        with transaction.atomic():
            audit_append(
                actor=Actor.service(name),
                action="test.appended",
                subject=("writer", name),
                data={"index": index},
            )


if __name__ == "__main__":
    main()
