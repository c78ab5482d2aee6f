"""The privileges `migrate` grants the platform's database role (marketplace.dbroles), checked
on a fresh role with PostgreSQL's own privilege functions."""

import uuid
from collections.abc import Iterator

import psycopg
import pytest

from marketplace.dbroles import app_role_grant_statements
from tests.support.pg import pg_connect

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


@pytest.fixture
def granted_role() -> Iterator[tuple[psycopg.Connection, str]]:
    role = f"mkp_probe_{uuid.uuid4().hex[:12]}"
    owner = pg_connect(owner=True)
    owner.execute(f'CREATE ROLE "{role}"')
    try:
        for statement in app_role_grant_statements(role, "public"):
            owner.execute(statement)
        yield owner, role
    finally:
        owner.execute(f'DROP OWNED BY "{role}"')
        owner.execute(f'DROP ROLE "{role}"')
        owner.close()


def can(owner: psycopg.Connection, role: str, table: str, privilege: str) -> bool:
    return owner.execute(
        "SELECT has_table_privilege(%s, %s, %s)", [role, table, privilege]
    ).fetchone()[0]


def can_column(owner: psycopg.Connection, role: str, table: str, column: str) -> bool:
    return owner.execute(
        "SELECT has_column_privilege(%s, %s, %s, 'UPDATE')", [role, table, column]
    ).fetchone()[0]


def test_the_app_role_appends_and_reads_the_audit_log_and_changes_only_the_seal(granted_role):
    owner, role = granted_role

    assert [can(owner, role, "audit_event", p) for p in ("SELECT", "INSERT")] == [True, True]
    assert [can(owner, role, "audit_event", p) for p in ("DELETE", "TRUNCATE")] == [False, False]
    assert [
        can_column(owner, role, "audit_event", c)
        for c in ("sequence", "prev_hash", "hash", "occurred_at", "data", "action", "actor_id")
    ] == [True, True, True, True, False, False, False]
    for table in ("audit_checkpoint", "audit_export"):
        assert can(owner, role, table, "INSERT")
        assert can(owner, role, table, "SELECT")
        assert not any(can(owner, role, table, p) for p in ("UPDATE", "DELETE", "TRUNCATE"))
    assert can(owner, role, "audit_chain_head", "SELECT")
    assert not any(
        can(owner, role, "audit_chain_head", p) for p in ("INSERT", "UPDATE", "DELETE", "TRUNCATE")
    )


def test_the_app_role_writes_the_other_tables_and_owns_nothing(granted_role):
    owner, role = granted_role

    for privilege in ("SELECT", "INSERT", "UPDATE", "DELETE"):
        assert can(owner, role, "orders_order", privilege)
    assert not can(owner, role, "orders_order", "TRUNCATE")
    owned = owner.execute(
        "SELECT count(*) FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner "
        "WHERE r.rolname = %s",
        [role],
    ).fetchone()[0]
    assert owned == 0


def test_granting_twice_changes_nothing(granted_role):
    owner, role = granted_role

    for statement in app_role_grant_statements(role, "public"):
        owner.execute(statement)

    assert not can(owner, role, "audit_event", "DELETE")
    assert can_column(owner, role, "audit_event", "sequence")
