"""Puts N active SKUs in the bench database: a core of 200 made through the catalog services,
and, past 200, copies of them made by the database in bulk.

The core (`CORE`) is what every size shows on the benchmark's pages, so that each page has the
same rows at 200 and at 100,000 SKUs: the newest 50 (the plain list), the 50 with the word
"Quasar" in their title (the search), and the 20 in the category `bench-small` (the small
category). Core SKUs are made the way the test factories make them (tests.catalog.factories):
a draft, an uploaded artifact, a manifest signed by the partner's registered key, full royalty
splits, then activation, so every row obeys the same rules as real data.

The bulk copies are older than every core SKU, in the three large categories, by the core's
partners, and never say "Quasar": they make the table, its indexes and the large categories
grow without changing any page. Each is a row like its template's (same artifact, manifest
and verdict, so it satisfies the model's constraints), with its own slug, title and times;
they have no royalty splits, which no catalog page shows. 100,000 rows take a few seconds
(INSERT ... SELECT over generate_series, then VACUUM ANALYZE). Safe to run again: it only
adds what is missing, and deletes the bulk copies past a smaller size.

    DJANGO_SETTINGS_MODULE=bench.catalog.settings python -m bench.catalog.seed --skus 100000
"""

import argparse
import os
import sys
import time

import django

CORE = 200
SKUS_PER_PUBLISHER = 20
SMALL_CATEGORY = "bench-small"
LARGE_CATEGORIES = ("bench-tools", "bench-models", "bench-assets")
SEARCH_WORD = "quasar"  # in the title of every 4th core SKU: 50 of the 200
SMALL_SIZE = 20  # core SKUs in SMALL_CATEGORY
SUMMARY = (
    "A benchmark package: {n} of a series, with enough words in its summary to look like a "
    "real listing on the catalog page."
)
BULK_BATCH = 50_000


def core_title(n: int) -> str:
    return f"Quasar Package {n}" if n % 4 == 0 else f"Bench Package {n}"


def seed_core(count: int) -> int:
    """Publishes core SKUs until there are `count` of them; returns how many it made."""
    from catalog import services
    from catalog.models import Category, Partner, Sku
    from tests.catalog.factories import TEST_ACTOR, make_publisher, publish_sku

    have = Sku.objects.filter(slug__startswith="bench-sku-").count()
    if have >= count:
        return 0
    categories = {}
    for slug in (SMALL_CATEGORY, *LARGE_CATEGORIES):
        category = Category.objects.filter(slug=slug).first()
        if category is None:
            category = services.category_save(
                category=Category(slug=slug, name=slug.replace("-", " ").title()),
                actor=TEST_ACTOR,
            )
        categories[slug] = category

    # Each run registers new publishers: the private half of an earlier run's key is gone.
    first_partner = Partner.objects.filter(slug__startswith="bench-partner-").count()
    publisher = None
    for i, n in enumerate(range(have, count)):
        if i % SKUS_PER_PUBLISHER == 0:
            p = first_partner + i // SKUS_PER_PUBLISHER
            publisher = make_publisher(
                slug=f"bench-partner-{p}",
                name=f"Bench Partner {p}",
                contract_reference=f"BENCH-CTR-{p:04d}",
                payout_reference=f"BENCH-PAY-{p:04d}",
            )
        category = SMALL_CATEGORY if n < SMALL_SIZE else LARGE_CATEGORIES[n % len(LARGE_CATEGORIES)]
        publish_sku(
            publisher,
            slug=f"bench-sku-{n}",
            title=core_title(n),
            summary=SUMMARY.format(n=n),
            category=categories[category],
            price_amount=499 + 250 * (n % 37),
            currency="USD" if n % 3 else "EUR",
            version=f"1.{n % 10}.0",
            preview_enabled=n % 2 == 0,
        )
    return count - have


def seed_bulk(count: int) -> int:
    """Copies core SKUs in the database until there are `count` bulk SKUs; returns how many it
    made. Bulk SKU n copies core SKU n % CORE (its partner, price, currency, artifact), in a
    large category, created a second before the oldest SKU for each n."""
    from django.db import connection, transaction

    from catalog.models import Category, Sku

    have = Sku.objects.filter(slug__startswith="bench-bulk-").count()
    if have >= count:
        return 0
    large = list(
        Category.objects.filter(slug__in=LARGE_CATEGORIES)
        .order_by("slug")
        .values_list("pk", flat=True)
    )
    columns = [f.column for f in Sku._meta.concrete_fields if not f.primary_key and not f.generated]
    chosen = {
        "slug": "'bench-bulk-' || g",
        "title": "'Bench Package ' || (g + %(core)s)",
        "summary": (
            "'A benchmark package: ' || (g + %(core)s) || ' of a series, with enough words in its "
            "summary to look like a real listing on the catalog page.'"
        ),
        "category_id": "(%(large)s::bigint[])[1 + g %% %(large_count)s]",
        "created_at": "%(oldest)s::timestamptz - g * interval '1 second'",
        "updated_at": "%(oldest)s::timestamptz - g * interval '1 second'",
        "activated_at": "%(oldest)s::timestamptz - g * interval '1 second'",
        "status_changed_at": "%(oldest)s::timestamptz - g * interval '1 second'",
    }
    select = ", ".join(chosen.get(column, f"t.{column}") for column in columns)
    sql = (
        f"INSERT INTO catalog_sku ({', '.join(columns)}) SELECT {select} "  # noqa: S608
        "FROM generate_series(%(first)s, %(last)s) g "
        "JOIN catalog_sku t ON t.slug = 'bench-sku-' || (g %% %(core)s)"
    )
    core = Sku.objects.filter(slug__startswith="bench-sku-").order_by("created_at")
    oldest = core.values_list("created_at", flat=True).first()
    done = have
    while done < count:
        last = min(count, done + BULK_BATCH)
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                sql,
                {
                    "first": done + 1,
                    "last": last,
                    "core": CORE,
                    "large": large,
                    "large_count": len(large),
                    # Below the oldest core SKU: bulk n is older than bulk n - 1.
                    "oldest": oldest,
                },
            )
        done = last
    with connection.cursor() as cursor:
        # What autovacuum would do soon after: fresh statistics, and the search index's
        # pending entries merged into the index (until then a search reads them one by one).
        cursor.execute("VACUUM ANALYZE catalog_sku")
    return count - have


def bulk_trim(count: int) -> int:
    """Deletes the bulk SKUs past the first `count` (a smaller size after a larger one); no
    other row refers to them."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "DELETE FROM catalog_sku WHERE slug LIKE 'bench-bulk-%%' "
            "AND substr(slug, 12)::int > %s",
            [count],
        )
        return cursor.rowcount


def seed(*, skus: int) -> tuple[int, int]:
    """Returns (SKUs created now, or deleted if negative; active SKUs in total)."""
    from catalog.models import Sku

    made = seed_core(min(skus, CORE))
    trimmed = bulk_trim(max(0, skus - CORE))
    if trimmed:
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE catalog_sku")
    made -= trimmed
    if skus > CORE:
        made += seed_bulk(skus - CORE)
    return made, Sku.objects.active().count()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skus", type=int, default=CORE, help=f"active SKUs (default {CORE})")
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.catalog.settings")
    django.setup()
    started = time.monotonic()
    created, active = seed(skus=args.skus)
    sys.stdout.write(
        f"seed: {created} SKUs created in {time.monotonic() - started:.1f} s, {active} active\n"
    )


if __name__ == "__main__":
    main()
