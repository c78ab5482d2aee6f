"""Settings for the catalog benchmark: the project's own, plus the floor view's URL.

The floor lives only in this URLconf, so it is never routed in a deployed process.
"""

from config.settings import *  # noqa: F403

ROOT_URLCONF = "bench.catalog.urls"

# Its own key prefix on top of its own Redis database: the bench never reads or retires keys
# that another process on the same Redis could be using.
CACHES["default"]["KEY_PREFIX"] = "marketplace-bench"  # noqa: F405
