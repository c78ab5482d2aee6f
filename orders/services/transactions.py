"""How the orders services commit a single write."""

from collections.abc import Iterator
from contextlib import contextmanager

from django.db import transaction


@contextmanager
def committed_alone() -> Iterator[None]:
    """Runs one statement as a transaction of its own.

    Outside any transaction, where the entry points that use it are called, Django is in
    autocommit: the statement commits as it returns, one round trip instead of BEGIN, the
    statement and COMMIT, and a refused one (IntegrityError) leaves nothing to roll back.
    Inside a transaction (a caller's, or a test's) a savepoint stands in, so that a refused
    statement does not abort the transaction around it; it then commits with that transaction.
    """
    if transaction.get_connection().in_atomic_block:
        with transaction.atomic():
            yield
    else:
        yield
