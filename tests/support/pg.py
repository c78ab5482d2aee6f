"""Second connections to the test database: for tests that hold a row lock while a worker
process tries to take it and watch who waits on whom, and, as the tables' owner, for tests that
play the database's owner (tests/conftest.py runs the suite as the platform's own role)."""

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from django.db import connection

# The role that created and migrated the test database (tests/conftest.py sets it).
OWNER: dict[str, str] = {}


def pg_connect(*, owner: bool = False) -> psycopg.Connection:
    """A connection as the platform's role, or with `owner` as the tables' owner."""
    db = connection.settings_dict
    user, password = (
        (OWNER["USER"], OWNER["PASSWORD"])
        if owner and OWNER
        else (
            db["USER"],
            db["PASSWORD"],
        )
    )
    return psycopg.connect(
        dbname=db["NAME"],
        user=user,
        password=password or None,
        host=db["HOST"],
        port=db["PORT"] or 5432,
        autocommit=owner,
    )


@contextmanager
def order_row_locked(order_id: Any) -> Iterator[int]:
    """Holds `SELECT ... FOR UPDATE` on the order's row in a connection of its own, so whoever
    processes a payment for it waits; yields that connection's backend pid."""
    with pg_connect() as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        conn.execute("SELECT id FROM orders_order WHERE id = %s FOR UPDATE", (order_id,))
        try:
            yield pid
        finally:
            conn.rollback()


def backends_blocked_by(pid: int) -> list[int]:
    with pg_connect() as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))", (pid,)
        ).fetchall()
    return [row[0] for row in rows]


def backends_alive(pids: list[int]) -> list[int]:
    with pg_connect() as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)
        ).fetchall()
    return [row[0] for row in rows]


def in_thread(work: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Runs `work` in a thread with a database connection of its own (closed when it ends);
    the list gets what it returned or raised, for the test to read after join()."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(work())
        except Exception as exc:  # the test reads it
            outcome.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome
