"""Settings for the rate-limit benchmark: the project's own, with a cache key prefix of its own
so that the bench deletes only the counters it made (bench/throttle/run.py)."""

from config.settings import *  # noqa: F403

CACHES["default"]["KEY_PREFIX"] = "marketplace-bench-throttle"  # noqa: F405
