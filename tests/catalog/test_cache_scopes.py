"""A catalog write retires the cached answers it can change and keeps the others
(catalog.cache: the catalog's generation and the scopes' generations). Whether an answer was
kept is seen by reading it with no SQL at all; whether it was retired, by its new content."""

import pytest
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext

from catalog import services
from catalog.cache import SCOPE_KEY
from tests.catalog.factories import TEST_ACTOR, CategoryFactory, make_publisher, publish_sku

pytestmark = pytest.mark.django_db(transaction=True)

PAGES = {
    "list": "/api/v1/skus",
    "software": "/api/v1/skus?category=software",
    "tools": "/api/v1/skus?category=tools",
    "games": "/api/v1/skus?category=games",
    "acme": "/api/v1/skus?partner=acme",
    "zeta": "/api/v1/skus?partner=zeta",
    "alpha": "/api/v1/skus/alpha",
    "delta": "/api/v1/skus/delta",
    "categories": "/api/v1/categories",
    "partners": "/api/v1/partners",
}


@pytest.fixture
def shop(publisher):
    software = CategoryFactory(slug="software")
    tools = CategoryFactory(slug="tools", parent=software)
    games = CategoryFactory(slug="games")
    zeta = make_publisher(slug="zeta", name="Zeta Games")
    return {
        "alpha": publish_sku(publisher, slug="alpha", title="Alpha", category=tools),
        "bravo": publish_sku(publisher, slug="bravo", title="Bravo", category=tools),
        "delta": publish_sku(zeta, slug="delta", title="Delta", category=games),
        "draft": publish_sku(publisher, slug="draft", title="Draft", activate=False),
        "software": software,
        "tools": tools,
        "games": games,
        "zeta": zeta,
    }


def read_all(api_client) -> dict[str, bytes]:
    answers = {}
    for name, url in PAGES.items():
        response = api_client.get(url)
        assert response.status_code == 200, (url, response.content)
        answers[name] = response.content
    return answers


def kept(api_client) -> set[str]:
    """The pages answered from the cache (no SQL)."""
    found = set()
    for name, url in PAGES.items():
        with CaptureQueriesContext(connection) as queries:
            api_client.get(url)
        if not queries:
            found.add(name)
    return found


def test_a_skus_write_retires_its_pages_and_keeps_the_others(api_client, shop):
    read_all(api_client)
    sku = shop["alpha"]
    sku.title = "Alpha Two"
    services.sku_save(sku=sku, actor=TEST_ACTOR)

    # Its page, the lists it is on (its category, the one above, its partner, all SKUs) and
    # the lists that count SKUs; another category, another partner, another SKU are kept.
    assert kept(api_client) == {"games", "zeta", "delta"}
    assert api_client.get("/api/v1/skus/alpha").json()["title"] == "Alpha Two"
    assert "Alpha Two" in str(api_client.get("/api/v1/skus?category=software").json())


def test_a_status_change_retires_the_lists_it_leaves(api_client, shop):
    read_all(api_client)
    services.sku_suspend(sku_id=shop["delta"].pk, reason="held", actor=TEST_ACTOR)

    assert kept(api_client) == {"software", "tools", "acme", "alpha"}
    assert api_client.get("/api/v1/skus?category=games").json()["results"] == []
    assert api_client.get("/api/v1/skus/delta").status_code == 404


def test_moving_a_sku_retires_the_category_it_left_and_the_one_it_joined(api_client, shop):
    read_all(api_client)
    sku = shop["delta"]
    sku.category = shop["tools"]
    services.sku_save(sku=sku, actor=TEST_ACTOR)

    def listed(url: str) -> list[str]:
        return [item["slug"] for item in api_client.get(url).json()["results"]]

    assert listed("/api/v1/skus?category=games") == []
    assert listed("/api/v1/skus?category=tools") == ["delta", "bravo", "alpha"]
    assert listed("/api/v1/skus?category=software") == ["delta", "bravo", "alpha"]


def test_a_write_to_a_draft_retires_nothing(api_client, shop):
    read_all(api_client)
    draft = shop["draft"]
    draft.title = "Still a draft"
    services.sku_save(sku=draft, actor=TEST_ACTOR)

    assert kept(api_client) == set(PAGES)


def test_a_partner_or_category_write_retires_everything(api_client, shop):
    read_all(api_client)
    zeta = shop["zeta"].partner
    zeta.name = "Zeta Renamed"
    services.partner_save(partner=zeta, actor=TEST_ACTOR)
    assert kept(api_client) == set()
    assert api_client.get("/api/v1/skus/delta").json()["partner"]["name"] == "Zeta Renamed"

    games = shop["games"]
    games.name = "Games Renamed"
    services.category_save(category=games, actor=TEST_ACTOR)
    assert kept(api_client) == set()


def scope_keys() -> set[str]:
    if hasattr(cache, "keys"):  # django-redis: the pattern stays inside the key prefix
        return set(cache.keys(SCOPE_KEY.format("*")))
    return {key for key in cache._cache if ":catalog-scope:" in key}  # local memory


def test_junk_slugs_leave_no_scope_generation(api_client, shop):
    read_all(api_client)
    before = scope_keys()

    for i in range(5):
        assert api_client.get(f"/api/v1/skus/no-such-{i}").status_code == 404
        assert api_client.get(f"/api/v1/skus?category=no-such-{i}").status_code == 400
        assert api_client.get(f"/api/v1/skus?partner=no-such-{i}").status_code == 400

    assert scope_keys() == before


def test_with_the_cache_off_nothing_is_cached_and_every_answer_is_fresh(api_client, shop, settings):
    settings.CATALOG_CACHE_SECONDS = 0
    read_all(api_client)
    assert kept(api_client) == set()
    assert scope_keys() == set()

    sku = shop["alpha"]
    sku.title = "Alpha Fresh"
    services.sku_save(sku=sku, actor=TEST_ACTOR)
    assert api_client.get("/api/v1/skus/alpha").json()["title"] == "Alpha Fresh"
