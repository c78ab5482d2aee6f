"""Settings for the previews benchmark: the project's own, with the run's Redis key prefix.

Every Redis key of a run starts with the prefix bench/previews/run.py sets: the cache's and the
rate limits' through KEY_PREFIX, kombu's (the queue, its bindings, unacked and delayed messages)
through global_keyprefix. The run then deletes its own keys and no others.
"""

import os

from config.settings import *  # noqa: F403

_KEY_PREFIX = os.environ.get("BENCH_PREVIEWS_KEY_PREFIX", "bench-previews")
CACHES["default"]["KEY_PREFIX"] = _KEY_PREFIX  # noqa: F405
CELERY_BROKER_TRANSPORT_OPTIONS = {
    **CELERY_BROKER_TRANSPORT_OPTIONS,  # noqa: F405
    "global_keyprefix": f"{_KEY_PREFIX}:",
}
