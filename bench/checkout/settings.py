"""Settings for the checkout benchmark: the project's own, plus the floor view's URL.

The floor lives only in this URLconf, so it is never routed in a deployed process.
"""

from config.settings import *  # noqa: F403

ROOT_URLCONF = "bench.checkout.urls"

# Its own key prefix on top of its own Redis database (bench/checkout/run.py --redis-db).
CACHES["default"]["KEY_PREFIX"] = "marketplace-bench-checkout"  # noqa: F405
