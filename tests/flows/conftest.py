from collections.abc import Iterator
from typing import Any

import pytest
import requests


@pytest.fixture
def buyer_http(live_server: Any, buyer_token: str) -> Iterator[requests.Session]:
    """A buyer's HTTP session against the live server."""
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {buyer_token}"
    yield http
    http.close()
