"""Puts at least N active SKUs in the bench database, through the catalog services.

The SKUs are made the way the test factories make them (tests.catalog.factories): a draft,
an uploaded artifact, a manifest signed by the partner's registered key, full royalty splits,
then activation, so every row obeys the same rules as real data. Safe to run again: it only
adds what is missing. Run with the bench settings:

    DJANGO_SETTINGS_MODULE=bench.catalog.settings python -m bench.catalog.seed --skus 200
"""

import argparse
import os
import sys

import django

SKUS_PER_PUBLISHER = 20
CATEGORY_SLUGS = ("bench-tools", "bench-models", "bench-assets", "bench-fonts")
SUMMARY = (
    "A benchmark package: {n} of a series, with enough words in its summary to look like a "
    "real listing on the catalog page."
)


def seed(*, skus: int) -> tuple[int, int]:
    """Returns (SKUs created now, active SKUs in total)."""
    from catalog import services
    from catalog.models import Category, Partner, Sku
    from tests.catalog.factories import TEST_ACTOR, make_publisher, publish_sku

    missing = skus - Sku.objects.active().count()
    if missing <= 0:
        return 0, Sku.objects.active().count()

    categories = []
    for slug in CATEGORY_SLUGS:
        category = Category.objects.filter(slug=slug).first()
        if category is None:
            category = services.category_save(
                category=Category(slug=slug, name=slug.replace("-", " ").title()),
                actor=TEST_ACTOR,
            )
        categories.append(category)

    # Each run registers new publishers: the private half of an earlier run's key is gone.
    first_partner = Partner.objects.filter(slug__startswith="bench-partner-").count()
    first_sku = Sku.objects.filter(slug__startswith="bench-sku-").count()
    publisher = None
    for i in range(missing):
        if i % SKUS_PER_PUBLISHER == 0:
            n = first_partner + i // SKUS_PER_PUBLISHER
            publisher = make_publisher(
                slug=f"bench-partner-{n}",
                name=f"Bench Partner {n}",
                contract_reference=f"BENCH-CTR-{n:04d}",
                payout_reference=f"BENCH-PAY-{n:04d}",
            )
        n = first_sku + i
        publish_sku(
            publisher,
            slug=f"bench-sku-{n}",
            title=f"Bench Package {n}",
            summary=SUMMARY.format(n=n),
            category=categories[n % len(categories)],
            price_amount=499 + 250 * (n % 37),
            currency="USD" if n % 3 else "EUR",
            version=f"1.{n % 10}.0",
            preview_enabled=n % 2 == 0,
        )
    return missing, Sku.objects.active().count()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skus", type=int, default=200, help="active SKUs wanted (default 200)")
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.catalog.settings")
    django.setup()
    created, active = seed(skus=args.skus)
    sys.stdout.write(f"seed: {created} SKUs created, {active} active\n")


if __name__ == "__main__":
    main()
