"""Settings for the metrics benchmark: the project's own, plus the before-style view's URL.

The before-style view (django-prometheus's own, open to anyone, rendering on every scrape) is
routed only by this URLconf, so it is never served by a deployed process.
"""

from config.settings import *  # noqa: F403

ROOT_URLCONF = "bench.metrics.urls"
