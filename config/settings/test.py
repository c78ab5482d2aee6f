"""The test suite: PostgreSQL and Redis when their URLs are set, embedded defaults otherwise.

Each pytest-xdist worker imports this module on its own, so each gets its own data folder,
cache key prefix and Celery queue; a worker process started by a test is given the same ones
through the environment.
"""

import os
import tempfile
import uuid
from pathlib import Path

from config.settings.base import *

_worker = os.environ.get("PYTEST_XDIST_WORKER", "main")

DATA_DIR = Path(
    os.environ.get("MARKETPLACE_TEST_DATA_DIR")
    or tempfile.mkdtemp(prefix=f"marketplace-test-{_worker}-")
)
for _folder in ("files", "broker/queue", "broker/control", "static"):
    (DATA_DIR / _folder).mkdir(parents=True, exist_ok=True)

if not DATABASE_URL:
    # A file, not ":memory:", so that a worker process started by a test sees the same data.
    DATABASES["default"]["NAME"] = str(DATA_DIR / "marketplace.sqlite3")
    DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / "test.sqlite3")}

if not S3_BUCKET:
    # Tests give each test its own folder (tests/conftest.py); a worker process they start
    # is told which one.
    STORAGES["default"]["OPTIONS"]["location"] = os.environ.get(
        "MARKETPLACE_TEST_FILES_DIR", str(DATA_DIR / "files")
    )

CACHES["default"]["KEY_PREFIX"] = os.environ.get(
    "MARKETPLACE_TEST_CACHE_PREFIX", f"marketplace-test-{_worker}-{os.getpid()}"
)

if BROKER_URL.startswith("filesystem:"):
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(DATA_DIR / "broker/queue"),
        "data_folder_out": str(DATA_DIR / "broker/queue"),
        "control_folder": str(DATA_DIR / "broker/control"),
        "store_processed": False,
    }
CELERY_TASK_DEFAULT_QUEUE = os.environ.get(
    "MARKETPLACE_CELERY_QUEUE", f"test-{_worker}-{uuid.uuid4().hex[:8]}"
)
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / "celerybeat-schedule")
# Tests give each test its own folder (tests/conftest.py); a worker process they start is told.
AUDIT_EXPORT_DIR = Path(os.environ.get("MARKETPLACE_TEST_AUDIT_DIR") or DATA_DIR / "audit")

# Short, as a Unix socket's path is at most 107 bytes, and outside the data folder, which
# mkdtemp makes 0700: a sandbox's host uid must pass through every folder above its binds.
if "MARKETPLACE_PREVIEW_DIR" not in os.environ:
    PREVIEW_DIR = Path(tempfile.mkdtemp(prefix=f"mkp-previews-{_worker}-"))
    PREVIEW_DIR.chmod(0o711)

ALLOWED_HOSTS = [*ALLOWED_HOSTS, "testserver"]
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
WHITENOISE_USE_FINDERS = True
# Every scrape renders afresh: a test reads /metrics right after moving a metric.
METRICS_CACHE_SECONDS = 0.0
# Every /health runs the checks: a test reads it right after breaking a dependency.
HEALTH_CACHE_SECONDS = 0.0
# No limit is reached unless a test sets it (tests/marketplace/test_throttling.py): the suite
# sends many requests from one address and one buyer.
REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"] = {scope: "100000/min" for scope in THROTTLE_RATES}
# The test client's login() authenticates without a request, which django-axes refuses; the
# lockout's own tests turn it on.
AXES_ENABLED = False
# The suite's webhook receiver listens on 127.0.0.1 (orders.partner_webhooks.transport).
PARTNER_WEBHOOK_ALLOW_LOOPBACK = True
