"""The PostgreSQL role the platform runs as, and what `migrate` grants it.

Two roles (docs/deploy.md, "Database roles"): the *owner*, which runs `migrate` and owns every
table, and the *app* role (MARKETPLACE_DATABASE_APP_ROLE), which the web, worker and beat
processes connect as. After every migrate, as the owner, `app_role_grant` gives the app role
what it needs on every table, except on the tables an app declares restricted (the audit log:
audit.apps), where it gets only what is declared: there it may insert and read, and update only
the columns that sealing sets, through the seal trigger. It owns nothing, so it can neither
disable a trigger nor alter a table.
"""

from dataclasses import dataclass

from django.conf import settings
from django.db import connections


@dataclass(frozen=True)
class Restricted:
    table: str
    privileges: tuple[str, ...]  # e.g. ("SELECT", "INSERT")
    update_columns: tuple[str, ...] = ()


RESTRICTED: dict[str, Restricted] = {}


def restrict(table: str, *privileges: str, update_columns: tuple[str, ...] = ()) -> None:
    """Declares what the app role may do on `table` (called from an AppConfig.ready)."""
    RESTRICTED[table] = Restricted(table, tuple(privileges), update_columns)


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def app_role_grant_statements(role: str, schema: str) -> list[str]:
    """The statements that give `role` its privileges in `schema`, idempotent."""
    who, where = _quoted(role), _quoted(schema)
    statements = [
        f"GRANT USAGE ON SCHEMA {where} TO {who}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {where} TO {who}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {where} TO {who}",
    ]
    for rule in RESTRICTED.values():
        table = _quoted(rule.table)
        statements.append(f"REVOKE ALL ON {table} FROM {who}")
        if rule.privileges:
            statements.append(f"GRANT {', '.join(rule.privileges)} ON {table} TO {who}")
        if rule.update_columns:
            columns = ", ".join(_quoted(column) for column in rule.update_columns)
            statements.append(f"GRANT UPDATE ({columns}) ON {table} TO {who}")
    return statements


def app_role_grant(role: str, *, using: str = "default") -> None:
    """Grants `role` its privileges in the connection's current schema."""
    connection = connections[using]
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_schema()")
        for statement in app_role_grant_statements(role, cursor.fetchone()[0]):
            cursor.execute(statement)


def app_role_grant_after_migrate(using: str = "default", **kwargs: object) -> None:
    role = settings.DATABASE_APP_ROLE
    if role:
        app_role_grant(role, using=using)
