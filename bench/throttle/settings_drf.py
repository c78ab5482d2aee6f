"""The same, with the throttles the API had before its atomic counters: DRF's own, which read a
list of timestamps from the cache and write it back (`old` in bench/throttle/run.py)."""

from bench.throttle.settings import *  # noqa: F403

REST_FRAMEWORK = {
    **REST_FRAMEWORK,  # noqa: F405
    "DEFAULT_THROTTLE_CLASSES": [
        "rest_framework.throttling.AnonRateThrottle",
        "rest_framework.throttling.UserRateThrottle",
    ],
}
