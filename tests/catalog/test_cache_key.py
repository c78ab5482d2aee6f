"""The catalog cache is keyed by the validated query, not the raw URL: junk in a query string
(unknown parameters, values that do not parse, other spellings of the same query) adds no
cache entry. Counted in the configured cache itself (Redis when MARKETPLACE_REDIS_URL is set),
among this test process's own keys under the catalog's prefix."""

from urllib.parse import parse_qs, urlsplit

import pytest
from django.core.cache import cache

from tests.catalog.factories import CategoryFactory, make_publisher, publish_sku

pytestmark = pytest.mark.django_db
PROBLEM = "application/problem+json"


def catalog_entries() -> set[str]:
    """The catalog's cache keys (catalog.cache: `catalog:…`) in this process's key prefix."""
    if hasattr(cache, "keys"):  # django-redis: the pattern stays inside the key prefix
        return set(cache.keys("catalog:*"))
    return {key for key in cache._cache if ":catalog:" in key}  # the local-memory cache


@pytest.fixture
def shop(publisher):
    tools = CategoryFactory(slug="tools")
    publish_sku(publisher, slug="alpha", title="Alpha Linter", category=tools, price_amount=500)
    publish_sku(publisher, slug="bravo", title="Bravo Build", category=tools, price_amount=1500)
    publish_sku(
        make_publisher(slug="zeta", name="Zeta"), slug="charlie", title="Charlie", price_amount=900
    )


# What is cached, once each.
CANONICAL = [
    "/api/v1/skus",
    "/api/v1/skus?category=tools&ordering=price&page_size=2",
    "/api/v1/skus?currency=USD",
    "/api/v1/skus/alpha",
    "/api/v1/categories",
    "/api/v1/partners",
]
# Valid, but not cached: any text or amount is a new query.
SEARCH = "/api/v1/skus?q=alpha+linter&currency=USD"

# Other spellings of the same queries: answered from the entries above.
SAME = {
    "/api/v1/skus": [
        "/api/v1/skus?ordering=-created",
        "/api/v1/skus?page_size=20",
        "/api/v1/skus?page_size=20&ordering=-created",
        "/api/v1/skus?ordering=&q=&category=&partner=&currency=",
        "/api/v1/skus?q=%20%20%09",
        "/api/v1/skus?page_size=%2B20",
    ],
    "/api/v1/skus?category=tools&ordering=price&page_size=2": [
        "/api/v1/skus?page_size=2&ordering=price&category=tools",
        "/api/v1/skus?ordering=price&category=tools&page_size=2",
        "/api/v1/skus?page_size=02&category=tools&ordering=price",
        "/api/v1/skus?category=tools&category=tools&ordering=price&page_size=2",
    ],
    "/api/v1/skus?currency=USD": [
        "/api/v1/skus?currency=usd",
        "/api/v1/skus?currency=Usd&q=%20",
    ],
    SEARCH: [
        "/api/v1/skus?currency=usd&q=alpha%20linter",
        "/api/v1/skus?q=%20Alpha%20%20%20LINTER%20&currency=Usd",
        "/api/v1/skus?q=alpha%09linter&currency=USD",
    ],
    "/api/v1/partners": ["/api/v1/partners?page_size=20"],
}


def junk(count: int) -> list[tuple[str, int]]:
    """Query strings an attacker varies to fill a URL-keyed cache, with the status each gets."""
    urls: list[tuple[str, int]] = []
    for i in range(count):
        urls += [
            (f"/api/v1/skus?utm_source=x{i}", 400),
            (f"/api/v1/skus?_={i}", 400),
            (f"/api/v1/skus?category=tools&cachebust={i}", 400),
            (f"/api/v1/skus?page={i}", 400),
            (f"/api/v1/skus?ordering=junk{i}", 400),
            (f"/api/v1/skus?page_size={101 + i}", 400),
            (f"/api/v1/skus?min_price=x{i}", 400),
            (f"/api/v1/skus?min_price={i + 10}&max_price={i}", 400),
            (f"/api/v1/skus?currency=X{i:02d}", 400),
            (f"/api/v1/skus?cursor=not-a-cursor-{i}", 400),
            (f"/api/v1/skus?category=no-such-{i}", 400),
            (f"/api/v1/skus?partner=no-such-{i}", 400),
            (f"/api/v1/skus/alpha?v={i}", 400),
            (f"/api/v1/skus/no-such-{i}", 404),
            (f"/api/v1/categories?v={i}", 400),
            (f"/api/v1/partners?v={i}", 400),
            (f"/api/v1/partners?page_size=0{i}0{i}", 400),
            # Valid queries whose values an attacker can vary without end: answered, never
            # cached.
            (f"/api/v1/skus?q=word{i}", 200),
            (f"/api/v1/skus?min_price={i}", 200),
            (f"/api/v1/skus?max_price={1000 + i}&category=tools", 200),
        ]
    return urls


def test_junk_query_strings_add_no_cache_entries(api_client, shop):
    answers = {}
    for url in [*CANONICAL, SEARCH]:
        response = api_client.get(url)
        assert response.status_code == 200, (url, response.content)
        answers[url] = response.content
    cached = catalog_entries()
    # One entry per read, and the generation number (catalog.cache.GENERATION_KEY).
    assert len(cached) == len(CANONICAL) + 1, sorted(cached)

    for url, spellings in SAME.items():
        for spelling in spellings:
            response = api_client.get(spelling)
            assert response.status_code == 200, (spelling, response.content)
            assert response.content == answers[url], spelling

    sent = junk(20)
    answered = [api_client.get(url) for url, _ in sent]

    assert len(sent) == 400
    assert catalog_entries() == cached
    for (url, status), response in zip(sent, answered, strict=True):
        assert response.status_code == status, (url, response.content)
        if status != 200:
            assert response["Content-Type"] == PROBLEM, url


def test_an_unknown_parameter_is_a_400_naming_it_and_what_the_endpoint_takes(api_client, shop):
    response = api_client.get("/api/v1/skus?catagory=tools&utm_source=mail")

    assert response.status_code == 400
    assert response["Content-Type"] == PROBLEM
    body = response.json()
    assert body["code"] == "invalid-input"
    assert sorted(body["errors"]) == ["catagory", "utm_source"]
    assert body["errors"]["catagory"] == [
        "Unknown parameter for this endpoint; it takes category, currency, cursor, max_price, "
        "min_price, ordering, page_size, partner, q."
    ]
    detail = api_client.get("/api/v1/skus/alpha?expand=all").json()
    assert detail["errors"] == {
        "expand": ["Unknown parameter for this endpoint; it takes no parameters."]
    }
    partners = api_client.get("/api/v1/partners?ordering=name").json()
    assert partners["errors"] == {
        "ordering": ["Unknown parameter for this endpoint; it takes cursor, page_size."]
    }
    # Nothing cached but the generation number.
    assert {key for key in catalog_entries() if not key.endswith(":catalog:generation")} == set()


def test_a_cached_page_links_in_one_spelling_whichever_was_asked_first(api_client, shop):
    first = api_client.get("/api/v1/skus?page_size=2&currency=usd&ordering=price").json()
    again = api_client.get("/api/v1/skus?ordering=price&currency=USD&page_size=2").json()
    assert again == first

    link = urlsplit(first["next"])
    query = parse_qs(link.query)
    assert link.path == "/api/v1/skus"
    assert sorted(query) == ["currency", "cursor", "ordering", "page_size"]
    assert (query["currency"], query["ordering"], query["page_size"]) == (["USD"], ["price"], ["2"])
    second = api_client.get(first["next"]).json()
    assert [item["slug"] for item in first["results"] + second["results"]] == [
        "alpha",
        "charlie",
        "bravo",
    ]
    # The default page size is left out of the links, like the default ordering.
    plain = api_client.get("/api/v1/skus?page_size=20&ordering=-created").json()
    assert plain["next"] is None
    paged = api_client.get("/api/v1/skus?page_size=1").json()
    assert sorted(parse_qs(urlsplit(paged["next"]).query)) == ["cursor", "page_size"]


def test_a_cursor_is_keyed_by_what_it_points_at(api_client, shop):
    first = api_client.get("/api/v1/skus?page_size=1").json()
    cursor = parse_qs(urlsplit(first["next"]).query)["cursor"][0]
    before = catalog_entries()

    second = api_client.get("/api/v1/skus", {"page_size": 1, "cursor": cursor})
    assert second.status_code == 200
    assert len(catalog_entries()) == len(before) + 1
    # The same page asked again in another parameter order reads the same entry.
    again = api_client.get("/api/v1/skus", {"cursor": cursor, "page_size": "01"})
    assert again.content == second.content
    assert len(catalog_entries()) == len(before) + 1
