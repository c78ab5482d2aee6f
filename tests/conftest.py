import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.core.cache import cache
from django.db import IntegrityError, ProgrammingError, connection, connections, transaction
from rest_framework.test import APIClient

from accounts.services import api_token_issue
from marketplace.dbroles import app_role_grant
from marketplace.models import User
from marketplace.roles import CONTENT_OPS, FINANCE, roles_sync
from tests.catalog.factories import TEST_ACTOR, Publisher, make_publisher
from tests.support import pg as pg_support

pytest_plugins = [
    "tests.support.browser",
    "tests.support.finance_api",
    "tests.support.kernel",
    "tests.support.moto",
    "tests.support.oidc",
    "tests.support.signing_proxy",
    "tests.support.stripe_api",
    "tests.support.worker",
]

STAFF_PASSWORD = "correct horse battery staple"


def _clear_cache() -> None:
    # delete_pattern stays inside this test process's key prefix; clear() would flush the
    # Redis database that other test processes share.
    if hasattr(cache, "delete_pattern"):
        cache.delete_pattern("*")
    else:
        cache.clear()


@pytest.fixture(autouse=True)
def _preview_process_slots_of_this_test_only() -> None:
    """The web process's preview slots (previews.serving): a test's response left unread (a slow
    reader) holds one until it lapses, which a later test in this process must not count."""
    from previews import serving

    serving._PROCESS_SLOTS = serving._ProcessSlots()


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    _clear_cache()
    yield
    _clear_cache()


@pytest.fixture(autouse=True)
def _own_file_storage(settings: Any, tmp_path: Path) -> None:
    """Each test gets an empty folder for stored files (unless it switches to S3), and one for
    audit exports and checkpoint copies: another test's are no witness of this one's chain."""
    settings.AUDIT_EXPORT_DIR = tmp_path / "audit"
    default = settings.STORAGES["default"]
    if default["BACKEND"].endswith("FileSystemStorage"):
        location = tmp_path / "files"
        location.mkdir()
        settings.STORAGES = {
            **settings.STORAGES,
            "default": {**default, "OPTIONS": {**default["OPTIONS"], "location": str(location)}},
        }


# The suite runs as the platform's own database role on PostgreSQL, as production does
# (docs/deploy.md#database-roles): the test database is created and migrated by the configured
# role, its owner, and the tests connect as this one. Empty runs the suite as the owner.
APP_ROLE = os.environ.get("MARKETPLACE_TEST_DATABASE_APP_ROLE", "marketplace_test_app")
_APPEND_ONLY_TABLES = ("audit_event", "audit_checkpoint", "audit_export", "audit_chain_head")
_audit_triggers_disabled = False


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: None, django_db_blocker: Any) -> Iterator[None]:
    db = connections["default"]
    if db.vendor != "postgresql" or not APP_ROLE:
        yield
        return
    owner = {"USER": db.settings_dict["USER"], "PASSWORD": db.settings_dict["PASSWORD"]}
    with django_db_blocker.unblock():
        with db.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [APP_ROLE])
            if cursor.fetchone() is None:
                try:
                    with transaction.atomic():
                        cursor.execute(f'CREATE ROLE "{APP_ROLE}" LOGIN')
                except (IntegrityError, ProgrammingError):
                    pass  # another test process created it meanwhile
            app_role_grant(APP_ROLE)
            # Test-only: emptying the database between transactional tests is a TRUNCATE of
            # every table (with the audit triggers off for it, by the owner: see below).
            cursor.execute(f'GRANT TRUNCATE ON ALL TABLES IN SCHEMA public TO "{APP_ROLE}"')
        db.close()
        db.settings_dict["USER"], db.settings_dict["PASSWORD"] = APP_ROLE, ""
    pg_support.OWNER.update(owner)
    yield
    with django_db_blocker.unblock():
        db.close()
        db.settings_dict.update(owner)


def _audit_triggers(state: str) -> None:
    global _audit_triggers_disabled
    if pg_support.OWNER:
        with pg_support.pg_connect(owner=True) as owner:
            for table in _APPEND_ONLY_TABLES:
                owner.execute(f"ALTER TABLE {table} {state} TRIGGER USER")
    else:
        with connection.cursor() as cursor:
            for table in _APPEND_ONLY_TABLES:
                cursor.execute(f"ALTER TABLE {table} {state} TRIGGER USER")
    _audit_triggers_disabled = state == "DISABLE"


@pytest.fixture(autouse=True)
def _audit_tables_append_only(request: pytest.FixtureRequest) -> Iterator[None]:
    """The audit tables' triggers refuse TRUNCATE, which is how a transactional test empties
    the database afterwards; so they are switched off just for that flush and back on before
    the next test that uses the database."""
    uses_db = request.node.get_closest_marker("django_db") or {
        "db",
        "transactional_db",
        "live_server",
    } & set(request.fixturenames)
    if not uses_db:
        yield
        return
    request.getfixturevalue("_django_db_helper")
    if connection.vendor != "postgresql":
        yield
        return
    transactional = not connection.in_atomic_block
    if _audit_triggers_disabled:
        if pg_support.OWNER:
            # By the owner, on its own connection, before this test touches the tables.
            _audit_triggers("ENABLE")
        else:
            # In a non-transactional test this runs inside the test's transaction and is
            # rolled back with it, so the triggers are on for the test and off afterwards.
            _audit_triggers("ENABLE")
            if not transactional:
                globals()["_audit_triggers_disabled"] = True
    yield
    if transactional:
        _audit_triggers("DISABLE")


@pytest.fixture
def api_client() -> APIClient:
    return APIClient()


@pytest.fixture
def buyer(db: None) -> User:
    return User.objects.create_user(email="buyer@example.com")


@pytest.fixture
def other_buyer(db: None) -> User:
    return User.objects.create_user(email="other.buyer@example.com")


@pytest.fixture
def buyer_token(buyer: User) -> str:
    _, token = api_token_issue(email=buyer.email, actor=TEST_ACTOR)
    return token


@pytest.fixture
def buyer_client(buyer_token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {buyer_token}")
    return client


def _staff(email: str, role: str) -> User:
    roles_sync()
    user = User.objects.create_user(email=email, password=STAFF_PASSWORD, is_staff=True)
    user.groups.add(*Group.objects.filter(name=role))
    return user


@pytest.fixture
def content_ops(db: None) -> User:
    return _staff("content.ops@example.com", CONTENT_OPS)


@pytest.fixture
def finance_staff(db: None) -> User:
    return _staff("finance@example.com", FINANCE)


@pytest.fixture
def publisher(db: None) -> Publisher:
    return make_publisher(slug="acme", name="Acme Tools")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `postgres` look at PostgreSQL itself (row locks from a second connection,
    transaction ids); on the embedded SQLite database they are skipped, saying so."""
    from django.conf import settings

    if settings.DATABASES["default"]["ENGINE"].endswith("postgresql"):
        return
    skip = pytest.mark.skip(reason="needs PostgreSQL (set MARKETPLACE_DATABASE_URL)")
    for item in items:
        if item.get_closest_marker("postgres"):
            item.add_marker(skip)
