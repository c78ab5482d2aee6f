"""Puts what the previews benchmark needs in its database, through the services: one active SKU
(published the way the test factories publish one) with sandbox preview material (the demo
server as `server.py` and an `index.html`, tests/previews/factories.py) and its preview switched
on, and BUYERS buyers with an API token each. Prints one JSON line:
{"sku": slug, "tokens": [...], "digest": ..., "command": [...], "index": ...}. Run with the
bench's settings and database:

    DJANGO_SETTINGS_MODULE=bench.previews.settings python -m bench.previews.seed --buyers 32
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
    from previews.selectors import material_current
    from previews.services import sku_preview_set
    from tests.catalog.factories import TEST_ACTOR, make_publisher, publish_sku
    from tests.previews.factories import INDEX, add_material

    run = uuid.uuid4().hex[:8]
    publisher = make_publisher(slug=f"bench-previews-seller-{run}", name=f"Bench Seller {run}")
    # The SKU's TTL is the longest a partner may give (a day): the runner sets the platform's
    # MARKETPLACE_PREVIEW_MAX_TTL_SECONDS per phase, and a session lasts the smaller of the two.
    sku = publish_sku(
        publisher,
        slug=f"bench-previews-{run}",
        title="Bench Previews Package",
        preview_ttl_seconds=86_400,
    )
    add_material(sku)
    sku_preview_set(sku_id=sku.pk, enabled=True, actor=TEST_ACTOR)
    sku.refresh_from_db()
    material = material_current(sku)
    assert material is not None
    actor = Actor.system("bench-previews")
    tokens = [
        api_token_issue(email=f"bench-previews-buyer-{run}-{n}@example.com", actor=actor)[1]
        for n in range(buyers)
    ]
    return {
        "sku": sku.slug,
        "tokens": tokens,
        "digest": material.digest,
        "command": material.command,
        "index": INDEX.decode(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--buyers", type=int, default=32)
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.previews.settings")
    django.setup()
    sys.stdout.write(json.dumps(seed(buyers=args.buyers)) + "\n")


if __name__ == "__main__":
    main()
