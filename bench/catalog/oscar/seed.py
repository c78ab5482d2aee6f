"""Copies the bench's catalog into the oscar shop: one product per SKU on sale in the platform's
bench database (UPC and slug = the SKU's slug, title, description = summary, the SKU's
creation and update times), in the category of the same slug, with a stock record at the
SKU's price from a partner of the same name. Runs in bench/catalog/.venv:

    BENCH_OSCAR_DATABASE=... DJANGO_SETTINGS_MODULE=bench.catalog.oscar.settings \\
        python -m bench.catalog.oscar.seed --from postgres://postgres@127.0.0.1:5432/mkp_cat_bench

Rows go in with COPY (100,000 products in seconds); an unchanged catalog is left as it is.
"""

import argparse
import os
import sys
import time
from decimal import Decimal
from typing import Any

import django

SKUS = """
    SELECT s.slug, s.title, s.summary, s.created_at, s.updated_at, s.price_amount, s.currency,
           c.slug, c.name, p.slug, p.name
    FROM catalog_sku s
    JOIN catalog_category c ON c.id = s.category_id
    JOIN catalog_partner p ON p.id = s.partner_id
    WHERE s.status = 'active'
    ORDER BY s.id
"""
# Minor units per major unit of the bench's currencies (bench/catalog/seed.py uses these).
EXPONENTS = {"USD": 2, "EUR": 2}


def copy_rows(cursor: Any, model: Any, rows: list[dict[str, Any]]) -> None:
    """COPY `rows` (dicts by field name) into `model`'s table; every other column gets the
    field's default, or NULL."""
    fields = [f for f in model._meta.concrete_fields if not getattr(f, "generated", False)]
    columns = ", ".join(f'"{f.column}"' for f in fields)
    defaults = {}
    for f in fields:
        if f.has_default():
            defaults[f.attname] = f.get_default()
        elif f.null:
            defaults[f.attname] = None
    with cursor.copy(f'COPY "{model._meta.db_table}" ({columns}) FROM STDIN') as copy:
        for row in rows:
            copy.write_row([row[f.attname] if f.attname in row else defaults[f.attname]
                            for f in fields])  # fmt: skip


def mirror(source_url: str) -> tuple[int, bool]:
    """Returns (products in the shop, whether they were copied now)."""
    import psycopg
    from django.db import connection, transaction
    from oscar.core.loading import get_model

    Product = get_model("catalogue", "Product")
    ProductClass = get_model("catalogue", "ProductClass")
    ProductCategory = get_model("catalogue", "ProductCategory")
    Category = get_model("catalogue", "Category")
    Partner = get_model("partner", "Partner")
    StockRecord = get_model("partner", "StockRecord")

    with psycopg.connect(source_url) as source:
        skus = source.execute(SKUS).fetchall()
    if (
        Product.objects.count() == len(skus)
        and list(Product.objects.order_by("id").values_list("upc", flat=True)[:1]) == [skus[0][0]]
        and Product.objects.filter(upc=skus[-1][0]).exists()
    ):
        return len(skus), False

    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(
                "TRUNCATE catalogue_productcategory, partner_stockrecord, catalogue_product "
                "RESTART IDENTITY CASCADE"
            )
        product_class, _ = ProductClass.objects.get_or_create(
            slug="bench", defaults={"name": "Bench", "requires_shipping": False,
                                    "track_stock": False},
        )  # fmt: skip
        categories = {c.slug: c.pk for c in Category.objects.all()}
        partners = {p.code: p.pk for p in Partner.objects.all()}
        for sku in skus:
            category_slug, category_name, partner_slug, partner_name = sku[7:11]
            if category_slug not in categories:
                categories[category_slug] = Category.objects.add_root(
                    name=category_name, slug=category_slug
                ).pk
            if partner_slug not in partners:
                partners[partner_slug] = Partner.objects.create(
                    code=partner_slug, name=partner_name
                ).pk
        products, links, stock = [], [], []
        for pk, (slug, title, summary, created, updated, amount, currency, category, _, partner,
                 _) in enumerate(skus, start=1):  # fmt: skip
            products.append({
                "id": pk, "structure": "standalone", "upc": slug, "title": title, "slug": slug,
                "description": summary, "product_class_id": product_class.pk,
                "date_created": created, "date_updated": updated,
            })  # fmt: skip
            links.append({"id": pk, "product_id": pk, "category_id": categories[category]})
            stock.append({
                "id": pk, "product_id": pk, "partner_id": partners[partner], "partner_sku": slug,
                "price_currency": currency, "num_in_stock": None, "num_allocated": None,
                "price": Decimal(amount).scaleb(-EXPONENTS[currency]),
                "date_created": created, "date_updated": updated,
            })  # fmt: skip
        with connection.cursor() as cursor:
            raw = cursor.cursor
            copy_rows(raw, Product, products)
            copy_rows(raw, ProductCategory, links)
            copy_rows(raw, StockRecord, stock)
            for table in ("catalogue_product", "catalogue_productcategory", "partner_stockrecord"):
                cursor.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "  # noqa: S608
                    f"(SELECT coalesce(max(id), 1) FROM {table}))"
                )
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE catalogue_product")
        cursor.execute("VACUUM ANALYZE catalogue_productcategory")
    return len(skus), True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", required=True, help="the platform's database")
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.catalog.oscar.settings")
    django.setup()
    started = time.monotonic()
    count, copied = mirror(args.source)
    what = "copied" if copied else "unchanged"
    sys.stdout.write(f"oscar seed: {count} products {what} ({time.monotonic() - started:.1f} s)\n")


if __name__ == "__main__":
    main()
