from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.core.cache import cache
from django.db import connection
from rest_framework.test import APIClient

from accounts.services import api_token_issue
from marketplace.models import User
from marketplace.roles import CONTENT_OPS, FINANCE, roles_sync
from tests.catalog.factories import TEST_ACTOR, Publisher, make_publisher

pytest_plugins = [
    "tests.support.browser",
    "tests.support.finance_api",
    "tests.support.kernel",
    "tests.support.moto",
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
def _fresh_cache() -> Iterator[None]:
    _clear_cache()
    yield
    _clear_cache()


@pytest.fixture(autouse=True)
def _own_file_storage(settings: Any, tmp_path: Path) -> None:
    """Each test gets an empty folder for stored files (unless it switches to S3)."""
    default = settings.STORAGES["default"]
    if default["BACKEND"].endswith("FileSystemStorage"):
        location = tmp_path / "files"
        location.mkdir()
        settings.STORAGES = {
            **settings.STORAGES,
            "default": {**default, "OPTIONS": {**default["OPTIONS"], "location": str(location)}},
        }


_APPEND_ONLY_TABLES = ("audit_event", "audit_checkpoint", "audit_export")
_audit_triggers_disabled = False


def _audit_triggers(state: str) -> None:
    global _audit_triggers_disabled
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
        # In a non-transactional test this runs inside the test's transaction and is rolled
        # back with it, so the triggers are on for the test and off again afterwards.
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
