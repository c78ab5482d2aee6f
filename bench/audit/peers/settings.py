"""A tiny Django project for the peers of bench/audit: django-auditlog and
django-simple-history, each auditing writes of a partner-like row. Runs in bench/audit/.venv
only; the database is named by BENCH_PEERS_DATABASE (one per peer)."""

import os

SECRET_KEY = "bench-peers-not-secret"  # noqa: S105 (a local benchmark, never served)
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "auditlog",
    "simple_history",
    "bench.audit.peers",
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ["BENCH_PEERS_DATABASE"],
        "USER": "postgres",
        "HOST": "127.0.0.1",
        "PORT": "5432",
    }
}
