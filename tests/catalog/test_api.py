from urllib.parse import parse_qs, urlsplit

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from catalog import services
from catalog.models import Sku
from tests.catalog.factories import (
    TEST_ACTOR,
    CategoryFactory,
    PartnerFactory,
    make_publisher,
    publish_sku,
)

pytestmark = pytest.mark.django_db
PROBLEM = "application/problem+json"


def slugs(response) -> list[str]:
    assert response.status_code == 200, response.content
    return [item["slug"] for item in response.json()["results"]]


def follow_all(api_client, url: str) -> list[str]:
    seen: list[str] = []
    while url:
        response = api_client.get(url)
        seen += slugs(response)
        url = response.json()["next"]
    return seen


@pytest.fixture
def catalog(publisher):
    """Two categories under one root, two partners, five SKUs on sale, one draft, one suspended."""
    software = CategoryFactory(slug="software")
    tools = CategoryFactory(slug="tools", parent=software)
    games = CategoryFactory(slug="games")
    other = make_publisher(slug="zeta", name="Zeta Games")
    skus = {
        "alpha": publish_sku(publisher, slug="alpha", title="Alpha Linter", category=tools,
                             price_amount=500, summary="Finds bugs"),
        "bravo": publish_sku(publisher, slug="bravo", title="Bravo Build", category=software,
                             price_amount=1500),
        "charlie": publish_sku(publisher, slug="charlie", title="Charlie Cache", category=tools,
                               price_amount=1500, currency="EUR"),
        "delta": publish_sku(other, slug="delta", title="Delta Racer", category=games,
                             price_amount=4000),
        "echo": publish_sku(other, slug="echo", title="Echo Puzzle", category=games,
                            price_amount=100, currency="JPY"),
        "draft": publish_sku(publisher, slug="draft", title="Draft", category=tools,
                             activate=False),
        "suspended": publish_sku(other, slug="suspended", title="Held", category=games),
    }  # fmt: skip
    services.sku_suspend(sku_id=skus["suspended"].pk, reason="held", actor=TEST_ACTOR)
    return skus


def test_only_skus_on_sale_are_listed_newest_first(api_client, catalog):
    assert slugs(api_client.get("/api/v1/skus")) == ["echo", "delta", "charlie", "bravo", "alpha"]


def test_list_item_shape(api_client, catalog):
    item = api_client.get("/api/v1/skus?q=alpha").json()["results"][0]
    sku = catalog["alpha"]
    assert item == {
        "slug": "alpha",
        "title": "Alpha Linter",
        "summary": "Finds bugs",
        "version": "1.0.0",
        "price": {"amount": 500, "currency": "USD", "display": "5.00 USD"},
        "category": {"slug": "tools", "name": "Tools", "path": "software/tools/"},
        "partner": {"slug": "acme", "name": "Acme Tools"},
        "preview": {"enabled": False, "ttl_seconds": 900},
        "created_at": sku.created_at.isoformat().replace("+00:00", "Z"),
        "updated_at": Sku.objects.get(pk=sku.pk).updated_at.isoformat().replace("+00:00", "Z"),
    }


def test_detail_of_a_sku_on_sale(api_client, catalog):
    sku = catalog["delta"]
    response = api_client.get("/api/v1/skus/delta")

    assert response.status_code == 200
    body = response.json()
    assert body["artifact"] == {
        "filename": "package.zip",
        "size": sku.artifact.size,
        "sha256": sku.artifact.sha256,
    }
    assert body["license"] == {
        "duration_days": None,
        "seats": 1,
        "entitlements": [],
        "terms_url": None,
    }
    assert body["partner"] == {"slug": "zeta", "name": "Zeta Games"}


@pytest.mark.parametrize("slug", ["draft", "suspended", "no-such-sku"])
def test_detail_of_anything_not_on_sale_is_a_404_problem(api_client, catalog, slug):
    response = api_client.get(f"/api/v1/skus/{slug}")

    assert response.status_code == 404
    assert response["Content-Type"] == PROBLEM
    assert response.json()["code"] == "sku-not-found"
    assert slug in response.json()["detail"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("category=software", ["charlie", "bravo", "alpha"]),  # subcategories included
        ("category=tools", ["charlie", "alpha"]),
        ("partner=zeta", ["echo", "delta"]),
        ("q=cache", ["charlie"]),
        ("q=ALPHA+linter", ["alpha"]),
        ("q=bugs", ["alpha"]),
        ("min_price=1500", ["delta", "charlie", "bravo"]),
        ("max_price=500", ["echo", "alpha"]),
        ("min_price=500&max_price=1500", ["charlie", "bravo", "alpha"]),
        ("currency=eur", ["charlie"]),
        ("currency=USD&min_price=1000", ["delta", "bravo"]),
        ("category=games&partner=acme", []),
    ],
)
def test_filters(api_client, catalog, query, expected):
    assert slugs(api_client.get(f"/api/v1/skus?{query}")) == expected


@pytest.mark.parametrize(
    ("ordering", "expected"),
    [
        ("price", ["echo", "alpha", "bravo", "charlie", "delta"]),
        ("-price", ["delta", "charlie", "bravo", "alpha", "echo"]),
        ("title", ["alpha", "bravo", "charlie", "delta", "echo"]),
        ("-title", ["echo", "delta", "charlie", "bravo", "alpha"]),
        ("created", ["alpha", "bravo", "charlie", "delta", "echo"]),
        ("-created", ["echo", "delta", "charlie", "bravo", "alpha"]),
    ],
)
def test_ordering_paginates_without_gaps_or_repeats(api_client, catalog, ordering, expected):
    # Pages of two cut through the tie between bravo and charlie (both 1500).
    assert follow_all(api_client, f"/api/v1/skus?ordering={ordering}&page_size=2") == expected


def test_previous_links_walk_back(api_client, catalog):
    first = api_client.get("/api/v1/skus?ordering=price&page_size=2").json()
    second = api_client.get(first["next"]).json()
    back = api_client.get(second["previous"]).json()

    assert [item["slug"] for item in back["results"]] == ["echo", "alpha"]
    assert first["previous"] is None


@pytest.mark.parametrize(
    ("query", "parameter", "message"),
    [
        ("min_price=abc", "min_price", "Enter a whole number."),
        ("min_price=9.99", "min_price", "Enter a whole number."),
        ("max_price=-1", "max_price", "greater than or equal to 0"),
        ("min_price=9223372036854775808", "min_price", "less than or equal to"),
        ("min_price=10&max_price=5", "max_price", "Must not be lower than min_price."),
        ("ordering=popularity", "ordering", "popularity is not one of the available choices"),
        ("page_size=101", "page_size", "Must be a whole number from 1 to 100."),
        ("page_size=0", "page_size", "Must be a whole number from 1 to 100."),
        ("page_size=ten", "page_size", "Must be a whole number from 1 to 100."),
        ("currency=XYZ", "currency", "XYZ is not an ISO 4217 currency code"),
        ("currency=DEM", "currency", "DEM is not an ISO 4217 currency code"),
        ("category=nope", "category", "Select a valid choice."),
        ("partner=nope", "partner", "Select a valid choice."),
        ("cursor=bm90LWEtY3Vyc29y", "cursor", "Not a cursor this API issued"),
        # A misspelt filter is refused, not ignored (which would list everything).
        ("catagory=tools", "catagory", "Unknown parameter for this endpoint; it takes category"),
        ("page=2", "page", "Unknown parameter for this endpoint"),
    ],
)
def test_bad_filters_are_400_naming_the_parameter(api_client, catalog, query, parameter, message):
    response = api_client.get(f"/api/v1/skus?{query}")

    assert response.status_code == 400
    assert response["Content-Type"] == PROBLEM
    body = response.json()
    assert body["code"] == "invalid-input"
    assert list(body["errors"]) == [parameter]
    assert message in body["errors"][parameter][0]
    assert parameter in body["detail"]


def test_a_tampered_cursor_is_refused(api_client, catalog):
    next_url = api_client.get("/api/v1/skus?page_size=2").json()["next"]
    cursor = parse_qs(urlsplit(next_url).query)["cursor"][0]
    tampered = cursor[:-3] + ("AAA" if not cursor.endswith("AAA") else "BBB")

    response = api_client.get("/api/v1/skus", {"cursor": tampered, "page_size": 2})

    assert response.status_code == 400
    assert list(response.json()["errors"]) == ["cursor"]


def test_a_cursor_cannot_be_reused_with_another_ordering(api_client, catalog):
    next_url = api_client.get("/api/v1/skus?ordering=title&page_size=2").json()["next"]
    cursor = parse_qs(urlsplit(next_url).query)["cursor"][0]

    response = api_client.get("/api/v1/skus", {"cursor": cursor, "ordering": "price"})

    assert response.status_code == 400
    assert "another ordering" in response.json()["errors"]["cursor"][0]


def test_list_costs_the_same_queries_whatever_its_size(api_client, publisher):
    category = CategoryFactory()
    for index in range(60):
        publish_sku(publisher, slug=f"pkg-{index}", category=category)

    counts = {}
    for size in (5, 50):
        with CaptureQueriesContext(connection) as queries:
            response = api_client.get(f"/api/v1/skus?page_size={size}")
        assert len(response.json()["results"]) == size
        counts[size] = len(queries)

    assert counts == {5: 1, 50: 1}


def test_filtered_list_query_count(api_client, catalog):
    with CaptureQueriesContext(connection) as queries:
        slugs(api_client.get("/api/v1/skus?category=software&partner=acme&page_size=50"))
    # the category lookup, the partner lookup, the page
    assert len(queries) == 3


def test_cached_reads_skip_the_database(api_client, catalog):
    api_client.get("/api/v1/skus?page_size=3")
    api_client.get("/api/v1/skus/alpha")

    with CaptureQueriesContext(connection) as queries:
        assert len(slugs(api_client.get("/api/v1/skus?page_size=3"))) == 3
        assert api_client.get("/api/v1/skus/alpha").status_code == 200
    assert len(queries) == 0


def test_a_cached_read_answers_what_the_first_read_did(api_client, catalog):
    first = api_client.get("/api/v1/skus?page_size=3")
    second = api_client.get("/api/v1/skus?page_size=3")

    assert second.status_code == 200
    assert second["Content-Type"] == first["Content-Type"] == "application/json"
    assert second.content == first.content


@pytest.mark.django_db(transaction=True)
def test_any_catalog_change_retires_cached_reads(api_client, publisher):
    sku = publish_sku(publisher, slug="alpha", title="Alpha")
    other = publish_sku(publisher, slug="bravo", title="Bravo")
    assert slugs(api_client.get("/api/v1/skus")) == ["bravo", "alpha"]
    assert api_client.get("/api/v1/skus/alpha").json()["title"] == "Alpha"

    # a SKU's fields
    sku.title = "Alpha Two"
    services.sku_save(sku=sku, actor=TEST_ACTOR)
    assert api_client.get("/api/v1/skus/alpha").json()["title"] == "Alpha Two"

    # its status
    services.sku_suspend(sku_id=other.pk, actor=TEST_ACTOR)
    assert slugs(api_client.get("/api/v1/skus")) == ["alpha"]

    # its partner
    publisher.partner.name = "Acme Renamed"
    services.partner_save(partner=publisher.partner, actor=TEST_ACTOR)
    assert api_client.get("/api/v1/skus/alpha").json()["partner"]["name"] == "Acme Renamed"

    # its category
    category = sku.category
    category.name = "Renamed Category"
    services.category_save(category=category, actor=TEST_ACTOR)
    assert api_client.get("/api/v1/skus/alpha").json()["category"]["name"] == "Renamed Category"
    assert "Renamed Category" in [
        c["name"] for c in api_client.get("/api/v1/categories").json()["results"]
    ]

    # its splits
    partners_before = api_client.get("/api/v1/partners").json()
    services.sku_splits_set(
        sku_id=sku.pk,
        splits=[(publisher.partner, 5000), (PartnerFactory(slug="co"), 5000)],
        actor=TEST_ACTOR,
    )
    assert api_client.get("/api/v1/partners").json() != partners_before


@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_change_keeps_the_cache(api_client, catalog):
    before = slugs(api_client.get("/api/v1/skus"))

    def suspend_then_fail() -> None:
        with transaction.atomic():
            services.sku_suspend(
                sku_id=catalog["alpha"].pk, reason="never happened", actor=TEST_ACTOR
            )
            raise RuntimeError("the rest of the admin's transaction failed")

    with pytest.raises(RuntimeError):
        suspend_then_fail()

    with CaptureQueriesContext(connection) as queries:
        assert slugs(api_client.get("/api/v1/skus")) == before
    assert len(queries) == 0  # the suspension rolled back, and so did its invalidation


def test_categories_list_the_tree_with_counts_of_skus_on_sale(api_client, catalog):
    body = api_client.get("/api/v1/categories").json()

    assert body["results"] == [
        {"slug": "games", "name": "Games", "path": "games/", "parent": None,
         "description": "", "sku_count": 2},
        {"slug": "software", "name": "Software", "path": "software/", "parent": None,
         "description": "", "sku_count": 3},
        {"slug": "tools", "name": "Tools", "path": "software/tools/", "parent": "software",
         "description": "", "sku_count": 2},
    ]  # fmt: skip


def test_partners_list_active_partners_with_counts(api_client, catalog):
    PartnerFactory(slug="dormant", is_active=False)

    body = api_client.get("/api/v1/partners").json()

    assert [(p["slug"], p["active_sku_count"]) for p in body["results"]] == [
        ("acme", 3),
        ("zeta", 2),
    ]
    assert set(body["results"][0]) == {
        "slug", "name", "kind", "website", "description", "active_sku_count"
    }  # fmt: skip
    assert "contract_reference" not in str(body)


def test_partners_paginate(api_client, catalog):
    assert follow_all(api_client, "/api/v1/partners?page_size=1") == ["acme", "zeta"]


def test_catalog_is_public_but_a_bad_token_is_still_refused(api_client, catalog, buyer_token):
    assert api_client.get("/api/v1/skus").status_code == 200
    assert (
        api_client.get("/api/v1/skus", HTTP_AUTHORIZATION=f"Bearer {buyer_token}").status_code
        == 200
    )
    assert api_client.get("/api/v1/skus", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
