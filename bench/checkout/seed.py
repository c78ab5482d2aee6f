"""Puts what the checkout benchmark needs in its database, through the services: one active
SKU (two partners' splits, made the way the test factories publish one) and BUYERS buyers with
an API token each. Prints one JSON line: {"sku": slug, "tokens": [...]}. Run with the bench's
settings and database:

    DJANGO_SETTINGS_MODULE=bench.checkout.settings python -m bench.checkout.seed --buyers 64
"""

import argparse
import json
import os
import sys
import uuid

import django


def seed(*, buyers: int) -> dict[str, object]:
    from accounts.services import api_token_issue
    from marketplace.actors import Actor
    from tests.catalog.factories import PartnerFactory, make_publisher, publish_sku

    run = uuid.uuid4().hex[:8]
    publisher = make_publisher(slug=f"bench-seller-{run}", name=f"Bench Seller {run}")
    co_author = PartnerFactory(slug=f"bench-co-author-{run}")
    sku = publish_sku(
        publisher,
        slug=f"bench-checkout-{run}",
        title="Bench Checkout Package",
        price_amount=2999,
        currency="EUR",
        splits=[(publisher.partner, 7000), (co_author, 3000)],
    )
    actor = Actor.system("bench-checkout")
    tokens = [
        api_token_issue(email=f"bench-buyer-{run}-{n}@example.com", actor=actor)[1]
        for n in range(buyers)
    ]
    return {"sku": sku.slug, "tokens": tokens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--buyers", type=int, default=64)
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.checkout.settings")
    django.setup()
    sys.stdout.write(json.dumps(seed(buyers=args.buyers)) + "\n")


if __name__ == "__main__":
    main()
