"""Settings for the checkout benchmark: the project's own, plus the floor view's URL.

The floor lives only in this URLconf, so it is never routed in a deployed process.
"""

import os

from config.settings import *  # noqa: F403

ROOT_URLCONF = "bench.checkout.urls"

# Every Redis key of a run starts with the run's prefix (bench/checkout/run.py sets it): the
# cache's and rate limits' keys through KEY_PREFIX, kombu's (the queue, its bindings, unacked
# messages) through global_keyprefix. The run then deletes its own keys and no others.
_KEY_PREFIX = os.environ.get("BENCH_CHECKOUT_KEY_PREFIX", "bench-checkout")
CACHES["default"]["KEY_PREFIX"] = _KEY_PREFIX  # noqa: F405
CELERY_BROKER_TRANSPORT_OPTIONS = {
    **CELERY_BROKER_TRANSPORT_OPTIONS,  # noqa: F405
    "global_keyprefix": f"{_KEY_PREFIX}:",
}
