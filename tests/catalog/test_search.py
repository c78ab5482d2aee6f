"""`q` on GET /api/v1/skus (catalog.search): full-text on PostgreSQL, substrings on SQLite; any
text is answered 200, or 400 where docs/catalog.md says (a NUL, more than 200 characters),
never 500."""

from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
from django.db import connection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from catalog.search import SEARCH_INDEX, search_document_configs, search_document_sync
from tests.catalog.factories import CategoryFactory, publish_sku
from tests.support import pg as pg_support

pytestmark = pytest.mark.django_db
PROBLEM = "application/problem+json"


def slugs(response) -> list[str]:
    assert response.status_code == 200, response.content
    return [item["slug"] for item in response.json()["results"]]


@pytest.fixture
def shop(publisher):
    tools = CategoryFactory(slug="tools")
    return {
        # "cache" in the title of one, in the summary of another, in the slug of a third.
        "title": publish_sku(publisher, slug="charlie", title="Charlie Cache", category=tools,
                             summary="Keeps build outputs"),
        "summary": publish_sku(publisher, slug="delta", title="Delta Build", category=tools,
                               summary="A remote cache for builds"),
        "slug": publish_sku(publisher, slug="cache-warmer", title="Warmer", category=tools,
                            summary="Primes servers"),
        "other": publish_sku(publisher, slug="echo", title="Echo Linter", category=tools,
                             summary="Finds bugs, fast"),
    }  # fmt: skip


def test_every_word_must_match_in_title_summary_or_slug(api_client, shop):
    assert sorted(slugs(api_client.get("/api/v1/skus?q=cache"))) == [
        "cache-warmer",
        "charlie",
        "delta",
    ]
    assert slugs(api_client.get("/api/v1/skus?q=cache+builds")) == ["delta"]
    assert slugs(api_client.get("/api/v1/skus?q=ECHO+bugs")) == ["echo"]
    assert slugs(api_client.get("/api/v1/skus?q=nothing-like-it")) == []


def test_relevance_puts_a_title_match_first(api_client, shop):
    found = slugs(api_client.get("/api/v1/skus?q=cache&ordering=relevance"))
    assert found[0] == "charlie"
    assert sorted(found) == ["cache-warmer", "charlie", "delta"]


def test_relevance_pages_without_gaps_or_repeats(api_client, publisher):
    for i in range(7):
        # Equal ranks in threes, so pages of two cut through ties.
        title = "Quasar Tool" if i % 3 == 0 else "Tool"
        publish_sku(publisher, slug=f"pkg-{i}", title=title, summary="quasar inside")
    seen, url = [], "/api/v1/skus?q=quasar&ordering=relevance&page_size=2"
    while url:
        response = api_client.get(url)
        seen += slugs(response)
        url = response.json()["next"]
    assert sorted(seen) == sorted(f"pkg-{i}" for i in range(7))
    assert len(seen) == 7
    assert set(seen[:3]) == {"pkg-0", "pkg-3", "pkg-6"}  # title matches first
    # The links keep q and the ordering.
    first = api_client.get("/api/v1/skus?q=QUASAR&ordering=relevance&page_size=2").json()
    query = parse_qs(urlsplit(first["next"]).query)
    assert (query["q"], query["ordering"]) == (["quasar"], ["relevance"])


def test_relevance_without_q_is_a_400_naming_ordering(api_client, shop):
    for url in ("/api/v1/skus?ordering=relevance", "/api/v1/skus?ordering=relevance&q=%20"):
        response = api_client.get(url)
        assert response.status_code == 400
        assert response["Content-Type"] == PROBLEM
        assert response.json()["errors"] == {
            "ordering": ["relevance orders SKUs by how well they match q; give q too."]
        }


def test_search_combines_with_the_other_filters(api_client, shop):
    assert slugs(api_client.get("/api/v1/skus?q=cache&category=tools&min_price=0")) != []
    assert slugs(api_client.get("/api/v1/skus?q=cache&currency=JPY")) == []


# Strings that mean something to tsquery, LIKE, SQL or URLs. Each is answered 200 with a list.
HOSTILE = [
    "&", "|", "!", "(", ")", ":", "*", "<->", "<2>", "'", '"', "\\", "%", "_", "%_%", "\\%",
    "a & b | !c", "!(cache)", "cache:*", "cache:A", "cache <-> builds", "cache<->", "'cache",
    '"cache', '"unclosed phrase', "((((((", "))))", "-", "--", "-cache", "or", "OR", "or or",
    "cache or", "and not", "'; DROP TABLE catalog_sku; --", "$1", "?", "%s", "{}", "[]",
    "ünïcödé", "缓存", "🙂", "\u200b", "\ufeff", "a\tb\nc", "\x01\x7f", "\u2028",
    "x" * 200, " ".join(["cache"] * 50)[:200], "&" * 200, "'" * 200, "!" * 199 + "x",
]  # fmt: skip


@pytest.mark.parametrize("q", HOSTILE)
def test_a_hostile_search_is_answered_200(api_client, shop, q):
    response = api_client.get("/api/v1/skus", {"q": q})

    assert response.status_code == 200, response.content
    assert isinstance(response.json()["results"], list)
    ranked = api_client.get("/api/v1/skus", {"q": q, "ordering": "relevance"})
    # relevance needs words; a q of blanks only has none.
    assert ranked.status_code == (200 if q.split() else 400), ranked.content


@pytest.mark.parametrize(
    ("q", "message"),
    [
        ("cache\x00", "Null characters are not allowed."),
        ("x" * 201, "Ensure this value has at most 200 characters (it has 201)."),
    ],
)
def test_a_nul_or_an_overlong_search_is_a_400_naming_q(api_client, shop, q, message):
    response = api_client.get("/api/v1/skus", {"q": q})

    assert response.status_code == 400
    assert response["Content-Type"] == PROBLEM
    assert response.json()["errors"] == {"q": [message]}


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(q=st.text(st.characters(exclude_categories=("Cs",)), max_size=260))
def test_any_search_is_a_200_or_the_documented_400(api_client, shop, q):
    for ordering in ("-created", "relevance", "price"):
        response = api_client.get("/api/v1/skus", {"q": q, "ordering": ordering})
        refused = "\x00" in q or len(q.strip()) > 200
        # relevance needs words; blanks only have none.
        expected = 400 if refused or (ordering == "relevance" and not q.split()) else 200
        assert response.status_code == expected, (q, ordering, response.content)
        if expected == 400:
            assert response["Content-Type"] == PROBLEM
            assert set(response.json()["errors"]) <= {"q", "ordering"}


@pytest.mark.postgres
def test_on_postgresql_words_are_whole_words_in_web_search_syntax(api_client, shop):
    assert slugs(api_client.get("/api/v1/skus?q=cach")) == []  # not a substring search
    assert slugs(api_client.get('/api/v1/skus?q="remote+cache"')) == ["delta"]
    assert slugs(api_client.get('/api/v1/skus?q="cache+remote"')) == []
    assert sorted(slugs(api_client.get("/api/v1/skus?q=linter+or+warmer"))) == [
        "cache-warmer",
        "echo",
    ]
    assert sorted(slugs(api_client.get("/api/v1/skus?q=cache+-builds"))) == [
        "cache-warmer",
        "charlie",
    ]


@pytest.fixture
def as_owner() -> Iterator[None]:
    """Django's connection as the tables' owner (the suite runs as the platform's role, which
    owns none): migrate, which rebuilds the search column, runs as the owner."""
    saved = {key: connection.settings_dict[key] for key in ("USER", "PASSWORD")}
    connection.close()
    connection.settings_dict.update(pg_support.OWNER or saved)
    try:
        yield
    finally:
        connection.close()
        connection.settings_dict.update(saved)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_search_column_follows_the_configured_language(api_client, shop, settings, as_owner):
    assert search_document_configs() == {"simple"}
    assert slugs(api_client.get("/api/v1/skus?q=bug")) == []  # "simple" does not stem

    settings.CATALOG_SEARCH_CONFIG = "english"
    try:
        assert search_document_sync() is True
        assert search_document_configs() == {"english"}
        assert search_document_sync() is False  # nothing to do the second time
        assert slugs(api_client.get("/api/v1/skus?q=bug")) == ["echo"]  # bugs -> bug
        # "the" is a stop word; "builds" and "build" are one word.
        assert sorted(slugs(api_client.get("/api/v1/skus?q=the+cache+builds"))) == [
            "charlie",
            "delta",
        ]
    finally:
        settings.CATALOG_SEARCH_CONFIG = "simple"
        search_document_sync()
    assert search_document_configs() == {"simple"}
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s", [SEARCH_INDEX])
        assert "gin (search_document) WHERE" in cursor.fetchone()[0]


@pytest.mark.postgres
def test_an_unknown_search_language_fails_the_sync_saying_so(settings):
    settings.CATALOG_SEARCH_CONFIG = "klingon"
    with pytest.raises(Exception, match='text search configuration "klingon" does not exist'):
        search_document_sync()
