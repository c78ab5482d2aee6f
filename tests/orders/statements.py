"""Counting what a service sends to the database, for tests that keep the count from growing.

`statements()` records every statement of the block, transaction control included (BEGIN,
COMMIT, SAVEPOINT, RELEASE SAVEPOINT, as Django logs them), and keeps the service's own apart
from those of its audit events (any statement on an `audit_` table): audit appends are counted
as events, so these tests assert what each service does itself, not how the audit log stores an
event. `shape` names each own statement by its verb and table (`SELECT catalog_sku FOR UPDATE`),
which is what a test compares. `commits` counts the transactions that committed: each COMMIT,
and each write that succeeded outside a transaction (autocommit).
"""

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from django.db import connection
from django.test.utils import CaptureQueriesContext

from audit.models import AuditEvent

_AUDIT_TABLE = re.compile(r'"audit_\w+"|\baudit_\w+')
_WRITE = re.compile(r"^\s*(INSERT|UPDATE|DELETE)\b", re.IGNORECASE)
_TABLE = re.compile(r'\b(?:FROM|INTO|UPDATE)\s+"?(\w+)"?', re.IGNORECASE)


def _shape(sql: str) -> str:
    verb = sql.split(None, 1)[0].upper()
    if verb in ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT"):
        return verb
    if verb == "RELEASE":
        return "RELEASE SAVEPOINT"
    table = _TABLE.search(sql)
    shape = f"{verb} {table.group(1)}" if table else verb
    return shape + (" FOR UPDATE" if re.search(r"\bFOR UPDATE\b", sql) else "")


def locked(table: str) -> str:
    """The shape of a read of `table` under a row lock (SQLite has no FOR UPDATE: a write
    transaction there locks the whole database)."""
    suffix = " FOR UPDATE" if connection.features.has_select_for_update else ""
    return f"SELECT {table}{suffix}"


@dataclass
class Statements:
    own: list[str] = field(default_factory=list)
    audit: list[str] = field(default_factory=list)
    audit_events: int = 0
    commits: int = 0

    @property
    def shape(self) -> list[str]:
        return [_shape(sql) for sql in self.own]


@contextmanager
def statements() -> Iterator[Statements]:
    found = Statements()
    autocommitted: list[str] = []

    def spy(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        result = execute(sql, params, many, context)  # a refused write commits nothing
        if not connection.in_atomic_block and _WRITE.match(sql):
            autocommitted.append(sql)
        return result

    events_before = AuditEvent.objects.count()
    with CaptureQueriesContext(connection) as captured, connection.execute_wrapper(spy):
        yield found
    found.audit_events = AuditEvent.objects.count() - events_before
    for query in captured.captured_queries:
        sql = query["sql"]
        (found.audit if _AUDIT_TABLE.search(sql) else found.own).append(sql)
    found.commits = found.shape.count("COMMIT") + len(autocommitted)
