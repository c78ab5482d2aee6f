from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.core.cache import cache
from rest_framework.test import APIClient

from marketplace.models import User
from marketplace.roles import CONTENT_OPS, FINANCE, roles_sync
from marketplace.services import api_token_issue
from tests.catalog.factories import Publisher, make_publisher

pytest_plugins = [
    "tests.support.browser",
    "tests.support.kernel",
    "tests.support.moto",
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
    _, token = api_token_issue(email=buyer.email)
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
