"""Settings shared by every environment.

Every value comes from a ``MARKETPLACE_*`` environment variable. With nothing set, the platform
runs on embedded defaults (SQLite, local files, local-memory cache, a file-system broker) kept
under ``MARKETPLACE_DATA_DIR``. ``production.py`` refuses those defaults.
"""

from datetime import timedelta
from pathlib import Path

from celery.schedules import crontab
from csp.constants import NONCE, NONE, SELF

from config.env import BASE_DIR, env, service_env
from marketplace.storages import s3_storage

SERVICE_ENV = service_env()

DATA_DIR = Path(env.str("MARKETPLACE_DATA_DIR", default="var"))
if not DATA_DIR.is_absolute():
    DATA_DIR = BASE_DIR / DATA_DIR

# A fixed, well-known key: fine on a laptop, refused by production.py.
DEV_SECRET_KEY = "dev-only-marketplace-secret-key-refused-in-production-0123456789abcdef"  # noqa: S105
SECRET_KEY = env.str("MARKETPLACE_SECRET_KEY", default=DEV_SECRET_KEY)

DEBUG = env.bool("MARKETPLACE_DEBUG", default=False)

ALLOWED_HOSTS = env.list("MARKETPLACE_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("MARKETPLACE_CSRF_TRUSTED_ORIGINS", default=[])

# --- Applications ------------------------------------------------------------------------------

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_prometheus",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "axes",
    "csp",
    "marketplace",
    "audit",
    "accounts",
    "catalog",
    "orders",
    "licensing",
    "previews",
    # Last: joins the apps together once all are ready (config/apps.py).
    "config.apps.PlatformConfig",
]

MIDDLEWARE = [
    # Before anything reads the body's length (the metrics middleware does).
    "marketplace.middleware.ContentLengthCheck",
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Early, so that its process_exception runs after the others' (metrics count the error
    # first); answers a database, cache or broker outage in a view as a 503.
    "marketplace.middleware.OutageMiddleware",
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # Before sessions and CSRF, so that every request to a limited path counts.
    "marketplace.ratelimit.RateLimitMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # A staff session's absolute lifetime and its silent renewal at the identity provider.
    "accounts.oidc.StaffSessionRenewal",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
    # Last, as django-axes requires: turns a locked-out sign-in into its 429.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
AUTH_USER_MODEL = "marketplace.User"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "accounts.context.sign_in",
            ],
        },
    },
]

# --- Database ----------------------------------------------------------------------------------

DATABASE_URL = env.str("MARKETPLACE_DATABASE_URL", default="")
# The role the platform runs as, given its privileges by `migrate` run as the owner
# (marketplace.dbroles; docs/deploy.md#database-roles).
DATABASE_APP_ROLE = env.str("MARKETPLACE_DATABASE_APP_ROLE", default="")
if DATABASE_URL:
    DATABASES = {"default": env.db_url_config(DATABASE_URL)}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(DATA_DIR / "marketplace.sqlite3"),
        }
    }

_db = DATABASES["default"]
if _db["ENGINE"] == "django.db.backends.sqlite3":
    _db["ENGINE"] = "django_prometheus.db.backends.sqlite3"
    # WAL lets the web server read while the worker writes; IMMEDIATE takes the write lock at
    # BEGIN so two writers queue on the busy timeout instead of failing with "database is locked".
    _db["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
elif _db["ENGINE"] == "django.db.backends.postgresql":
    _db["ENGINE"] = "django_prometheus.db.backends.postgresql"
    _db["CONN_MAX_AGE"] = env.int("MARKETPLACE_DB_CONN_MAX_AGE", default=60)
    _db["CONN_HEALTH_CHECKS"] = True
_db["ATOMIC_REQUESTS"] = False

# --- Cache -------------------------------------------------------------------------------------

REDIS_URL = env.str("MARKETPLACE_REDIS_URL", default="")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django_prometheus.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "marketplace",
            "OPTIONS": {
                "CLIENT_CLASS": "django_redis.client.DefaultClient",
                "SOCKET_CONNECT_TIMEOUT": 2,
                "SOCKET_TIMEOUT": 2,
                # A cache outage degrades reads to the database instead of failing them;
                # /health still reports it because its probe reads back what it wrote.
                "IGNORE_EXCEPTIONS": True,
            },
        }
    }
    # Staff sessions live in Redis too (the runbooks), but not with the cache's forgiveness: a
    # session that cannot be read or written is an outage (503), not a silent sign-out.
    CACHES["sessions"] = {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "marketplace-session",
        "OPTIONS": {
            "CLIENT_CLASS": "django_redis.client.DefaultClient",
            "SOCKET_CONNECT_TIMEOUT": 2,
            "SOCKET_TIMEOUT": 2,
        },
    }
    SESSION_ENGINE = "django.contrib.sessions.backends.cache"
    SESSION_CACHE_ALIAS = "sessions"
    DJANGO_REDIS_LOG_IGNORED_EXCEPTIONS = True
else:
    CACHES = {
        "default": {
            "BACKEND": "django_prometheus.cache.backends.locmem.LocMemCache",
            "LOCATION": "marketplace",
        }
    }

CATALOG_CACHE_SECONDS = env.int("MARKETPLACE_CATALOG_CACHE_SECONDS", default=300)
# The PostgreSQL text search configuration of the catalog search (catalog.search); `migrate`
# rebuilds the search column when it changes.
CATALOG_SEARCH_CONFIG = env.str("MARKETPLACE_CATALOG_SEARCH_CONFIG", default="simple")

# --- Storage -----------------------------------------------------------------------------------

S3_BUCKET = env.str("MARKETPLACE_S3_BUCKET", default="")
S3_ENDPOINT_URL = env.str("MARKETPLACE_S3_ENDPOINT_URL", default="")
S3_REGION = env.str("MARKETPLACE_S3_REGION", default="us-east-1")
S3_KMS_KEY_ID = env.str("MARKETPLACE_S3_KMS_KEY_ID", default="")

if S3_BUCKET:
    _default_storage = s3_storage(
        bucket=S3_BUCKET, endpoint_url=S3_ENDPOINT_URL, region=S3_REGION, kms_key_id=S3_KMS_KEY_ID
    )
else:
    _default_storage = {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(DATA_DIR / "files"), "base_url": None},
    }

STORAGES = {
    "default": _default_storage,
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

STATIC_URL = "/static/"
STATIC_ROOT = DATA_DIR / "static"

ARTIFACT_MAX_BYTES = env.int("MARKETPLACE_ARTIFACT_MAX_BYTES", default=10 * 1024**3)
# Uploads above this size spool to a temporary file rather than memory.
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024

# --- Celery ------------------------------------------------------------------------------------

BROKER_URL = env.str("MARKETPLACE_BROKER_URL", default="") or REDIS_URL or "filesystem://localhost/"
CELERY_BROKER_URL = BROKER_URL
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
if BROKER_URL.startswith("filesystem:"):
    _broker_dir = DATA_DIR / "broker"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
    }
else:
    # Longer than the longest retry countdown, so a delayed task is not redelivered early.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 2 * 3600}
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SOFT_TIME_LIMIT = 60
CELERY_TASK_TIME_LIMIT = 90
CELERY_TASK_DEFAULT_QUEUE = env.str("MARKETPLACE_CELERY_QUEUE", default="marketplace")
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_TIMEZONE = "UTC"
# Celery closes every database connection before and after each task unless told to reuse them;
# reused, they follow CONN_MAX_AGE and its health checks as web requests do (config.celery), so
# a task does not pay for a new connection (about 8 ms on PostgreSQL).
CELERY_DB_REUSE_MAX = env.int("MARKETPLACE_CELERY_DB_REUSE_MAX", default=1000)
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / "celerybeat-schedule")

# --- Outside services --------------------------------------------------------------------------

KERNEL_URL = env.str("MARKETPLACE_KERNEL_URL", default="")
KERNEL_CERT = env.str("MARKETPLACE_KERNEL_CERT", default="")
KERNEL_KEY = env.str("MARKETPLACE_KERNEL_KEY", default="")
KERNEL_CA = env.str("MARKETPLACE_KERNEL_CA", default="")
KERNEL_TIMEOUT_SECONDS = env.float("MARKETPLACE_KERNEL_TIMEOUT_SECONDS", default=10.0)

# The moderation gate before publish (catalog.moderation, docs/moderation.md).
MODERATION_BACKEND = env.str("MARKETPLACE_MODERATION_BACKEND", default="local")
MODERATION_URL = env.str("MARKETPLACE_MODERATION_URL", default="")
MODERATION_TOKEN = env.str("MARKETPLACE_MODERATION_TOKEN", default="")
MODERATION_TIMEOUT_SECONDS = env.float("MARKETPLACE_MODERATION_TIMEOUT_SECONDS", default=30.0)
# {"<category slug>": {"types": [groups or types], "max_bytes": N}} over the defaults.
MODERATION_CATEGORY_TYPES = env.json("MARKETPLACE_MODERATION_CATEGORY_TYPES", default={})
MODERATION_ARCHIVE_MAX_ENTRIES = env.int(
    "MARKETPLACE_MODERATION_ARCHIVE_MAX_ENTRIES", default=10_000
)
MODERATION_ARCHIVE_MAX_RATIO = env.int("MARKETPLACE_MODERATION_ARCHIVE_MAX_RATIO", default=100)
MODERATION_ARCHIVE_MAX_UNPACKED_BYTES = env.int(
    "MARKETPLACE_MODERATION_ARCHIVE_MAX_UNPACKED_BYTES", default=50 * 1024**3
)
if MODERATION_BACKEND not in ("local", "http"):
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(
        f"MARKETPLACE_MODERATION_BACKEND is {MODERATION_BACKEND!r}; use local or http"
    )
if MODERATION_BACKEND == "http" and not MODERATION_URL:
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(
        "MARKETPLACE_MODERATION_URL is not set; the http moderation backend needs it"
    )

LICENSE_SIGNER_KEY_ID = env.str("MARKETPLACE_LICENSE_SIGNER_KEY_ID", default="")
# The local key store's master key (32 bytes, base64); unset, a key file in DATA_DIR/keys.
KEYSTORE_MASTER_KEY = env.str("MARKETPLACE_KEYSTORE_MASTER_KEY", default="")

# --- Payments and Finance ----------------------------------------------------------------------

# Unset, the local test gateway (refused in production) takes the payments.
STRIPE_SECRET_KEY = env.str("MARKETPLACE_STRIPE_SECRET_KEY", default="")
# Comma-separated: during a rotation both the new and the old secret are accepted.
STRIPE_WEBHOOK_SECRETS = env.list("MARKETPLACE_STRIPE_WEBHOOK_SECRET", default=[])
STRIPE_API_BASE = env.str("MARKETPLACE_STRIPE_API_BASE", default="")
STRIPE_TIMEOUT_SECONDS = env.float("MARKETPLACE_STRIPE_TIMEOUT_SECONDS", default=10.0)
STRIPE_WEBHOOK_TOLERANCE_SECONDS = env.int(
    "MARKETPLACE_STRIPE_WEBHOOK_TOLERANCE_SECONDS", default=300
)
# The port the web server listens on (Procfile, scripts/demo): the default public URL follows
# it, so every process (web, worker, a command) makes links to the same server.
PORT = env.int("MARKETPLACE_PORT", default=8085)
PUBLIC_URL = env.str("MARKETPLACE_PUBLIC_URL", default=f"http://127.0.0.1:{PORT}").rstrip("/")
CHECKOUT_SUCCESS_URL = env.str(
    "MARKETPLACE_CHECKOUT_SUCCESS_URL", default=f"{PUBLIC_URL}/checkout/success"
)
CHECKOUT_CANCEL_URL = env.str(
    "MARKETPLACE_CHECKOUT_CANCEL_URL", default=f"{PUBLIC_URL}/checkout/cancelled"
)
CHECKOUT_IDEMPOTENCY_TTL = timedelta(hours=24)
# How long a checkout may take before a retry with its key is allowed to take over.
CHECKOUT_LOCK_SECONDS = env.int("MARKETPLACE_CHECKOUT_LOCK_SECONDS", default=30)
WEBHOOK_MAX_ATTEMPTS = env.int("MARKETPLACE_WEBHOOK_MAX_ATTEMPTS", default=8)
# A stored event not picked up within this long lost its enqueue (a crash between the commit
# and the send): the beat sweep sends it again.
WEBHOOK_STRANDED_SECONDS = env.int("MARKETPLACE_WEBHOOK_STRANDED_SECONDS", default=60)

# Signed webhooks to partners (orders.partner_webhooks, docs/partner-webhooks.md).
PARTNER_WEBHOOK_CONNECT_TIMEOUT_SECONDS = env.float(
    "MARKETPLACE_PARTNER_WEBHOOK_CONNECT_TIMEOUT_SECONDS", default=3.0
)
PARTNER_WEBHOOK_TIMEOUT_SECONDS = env.float(
    "MARKETPLACE_PARTNER_WEBHOOK_TIMEOUT_SECONDS", default=10.0
)
PARTNER_WEBHOOK_RETRY_HOURS = env.int("MARKETPLACE_PARTNER_WEBHOOK_RETRY_HOURS", default=72)
PARTNER_WEBHOOK_RETRY_BASE_SECONDS = env.float(
    "MARKETPLACE_PARTNER_WEBHOOK_RETRY_BASE_SECONDS", default=30.0
)
PARTNER_WEBHOOK_RETRY_CAP_SECONDS = env.float(
    "MARKETPLACE_PARTNER_WEBHOOK_RETRY_CAP_SECONDS", default=6 * 3600.0
)
PARTNER_WEBHOOK_DISABLE_AFTER_HOURS = env.int(
    "MARKETPLACE_PARTNER_WEBHOOK_DISABLE_AFTER_HOURS", default=72
)
PARTNER_WEBHOOK_SECRET_OVERLAP_HOURS = env.int(
    "MARKETPLACE_PARTNER_WEBHOOK_SECRET_OVERLAP_HOURS", default=24
)
# Plain http to a loopback address, for the test suite's local receiver only: no variable sets
# it, so no deployment can.
PARTNER_WEBHOOK_ALLOW_LOOPBACK = False

FINANCE_URL = env.str("MARKETPLACE_FINANCE_URL", default="").rstrip("/")
FINANCE_TOKEN = env.str("MARKETPLACE_FINANCE_TOKEN", default="")
FINANCE_TIMEOUT_SECONDS = env.float("MARKETPLACE_FINANCE_TIMEOUT_SECONDS", default=10.0)

# Stops finalization: no new checkouts (503), licenses, deliveries or proofs; reads go on.
MAINTENANCE_MODE = env.bool("MAINTENANCE_MODE", default=False)
# Retry-After of the 503s: a maintenance window, and an outage of the database, cache,
# broker or package storage.
MAINTENANCE_RETRY_AFTER_SECONDS = env.int(
    "MARKETPLACE_MAINTENANCE_RETRY_AFTER_SECONDS", default=300
)
OUTAGE_RETRY_AFTER_SECONDS = env.int("MARKETPLACE_OUTAGE_RETRY_AFTER_SECONDS", default=30)
# A bearer token that reads /health/details (each check's error) without a staff session,
# so that it can be read while the database is down; unset, only staff sessions can.
HEALTH_TOKEN = env.str("MARKETPLACE_HEALTH_TOKEN", default="")
# How long one run of the checks answers every GET /health of a process (/health/details runs
# them afresh): a run opens a broker connection and asks S3, and anyone may call /health.
HEALTH_CACHE_SECONDS = env.float("MARKETPLACE_HEALTH_CACHE_SECONDS", default=2.0)

# --- Licensing and delivery --------------------------------------------------------------------

# The KMS key that generates and wraps each delivery's data key; unset, the key-store master
# key wraps it (refused in production).
DELIVERY_KMS_KEY_ID = env.str("MARKETPLACE_DELIVERY_KMS_KEY_ID", default="") or S3_KMS_KEY_ID
# Object-lock retention (COMPLIANCE) of each delivered package in the bucket; 0 turns it off.
DELIVERY_RETENTION_DAYS = env.int("MARKETPLACE_DELIVERY_RETENTION_DAYS", default=3650)
DELIVERY_CHUNK_BYTES = env.int("MARKETPLACE_DELIVERY_CHUNK_BYTES", default=1024 * 1024)
DELIVERY_MAX_ATTEMPTS = env.int("MARKETPLACE_DELIVERY_MAX_ATTEMPTS", default=5)
# The fulfilment sweep re-sends a pending delivery never started after this long (its task was
# lost), or whose last attempt failed (letting go of the heartbeat) and began
# DELIVERY_ABANDONED_SECONDS ago with no retry since (its retry was lost). An attempt that is
# still packaging is not disturbed by a re-send: it holds the delivery while its heartbeat is
# fresh, and a second task finding it so does nothing.
DELIVERY_NEVER_STARTED_SECONDS = env.int("MARKETPLACE_DELIVERY_NEVER_STARTED_SECONDS", default=60)
DELIVERY_ABANDONED_SECONDS = env.int("MARKETPLACE_DELIVERY_ABANDONED_SECONDS", default=1200)
# While it streams the package an attempt moves the delivery's heartbeat at most this often; a
# heartbeat older than DELIVERY_STALE_SECONDS means its worker died (Redis would redeliver the
# message only after its visibility timeout): the sweep re-sends the delivery, and the next
# attempt takes it over. Partial package files older than that, owned by no live attempt, are
# removed by the spool sweep.
DELIVERY_HEARTBEAT_SECONDS = env.float("MARKETPLACE_DELIVERY_HEARTBEAT_SECONDS", default=10.0)
DELIVERY_STALE_SECONDS = env.float("MARKETPLACE_DELIVERY_STALE_SECONDS", default=60.0)
if DELIVERY_HEARTBEAT_SECONDS >= DELIVERY_STALE_SECONDS:
    from django.core.exceptions import ImproperlyConfigured

    # Every live attempt would look dead between two beats and be taken over.
    raise ImproperlyConfigured(
        f"MARKETPLACE_DELIVERY_HEARTBEAT_SECONDS ({DELIVERY_HEARTBEAT_SECONDS:g}) must be "
        f"less than MARKETPLACE_DELIVERY_STALE_SECONDS ({DELIVERY_STALE_SECONDS:g})"
    )
DOWNLOAD_LINK_SECONDS = env.int("MARKETPLACE_DOWNLOAD_LINK_SECONDS", default=900)
DOWNLOAD_LIMIT = env.int("MARKETPLACE_DOWNLOAD_LIMIT", default=10)

# --- Audit -------------------------------------------------------------------------------------

AUDIT_BUCKET = env.str("MARKETPLACE_AUDIT_BUCKET", default="")
AUDIT_S3_ENDPOINT_URL = env.str("MARKETPLACE_AUDIT_S3_ENDPOINT_URL", default="") or S3_ENDPOINT_URL
AUDIT_RETENTION_DAYS = env.int("MARKETPLACE_AUDIT_RETENTION_DAYS", default=2557)
AUDIT_EXPORT_DIR = Path(env.str("MARKETPLACE_AUDIT_EXPORT_DIR", default=str(DATA_DIR / "audit")))
# Checkpoints are the witness of the chain's tail (docs/audit.md): their period bounds the window
# of sealed events no witness has seen.
AUDIT_CHECKPOINT_SECONDS = env.float("MARKETPLACE_AUDIT_CHECKPOINT_SECONDS", default=20.0)
# The beat safety net for sealing; commits wake the sealer at once (audit.sealer).
AUDIT_SEAL_SECONDS = env.float("MARKETPLACE_AUDIT_SEAL_SECONDS", default=2.0)
SIGNING_ENDPOINT = env.str("MARKETPLACE_SIGNING_ENDPOINT", default="")

# --- Previews ----------------------------------------------------------------------------------

# Who runs the sandboxes: `local` (bubblewrap processes on the workers' host, which must also be
# the web servers' host: they reach each sandbox over its Unix socket) or `kubernetes`.
PREVIEW_PROVISIONER = env.str("MARKETPLACE_PREVIEW_PROVISIONER", default="local")
# A session lasts its SKU's preview TTL, never longer than this.
PREVIEW_MAX_TTL_SECONDS = env.int("MARKETPLACE_PREVIEW_MAX_TTL_SECONDS", default=3600)
PREVIEW_MAX_OPEN_PER_BUYER = env.int("MARKETPLACE_PREVIEW_MAX_OPEN_PER_BUYER", default=2)
PREVIEW_MAX_STARTED_PER_HOUR = env.int("MARKETPLACE_PREVIEW_MAX_STARTED_PER_HOUR", default=10)
# Sessions open at once across the platform; above it, 503 with Retry-After.
PREVIEW_CAPACITY = env.int("MARKETPLACE_PREVIEW_CAPACITY", default=20)
# The longest a request's `Prefer: wait=N` may hold it until the session is ready.
PREVIEW_READY_WAIT_SECONDS = env.float("MARKETPLACE_PREVIEW_READY_WAIT_SECONDS", default=5.0)
# A sandbox not answering on its socket this long after its start is torn down, marked failed.
PREVIEW_START_TIMEOUT_SECONDS = env.float("MARKETPLACE_PREVIEW_START_TIMEOUT_SECONDS", default=10.0)
# Serving /previews/{token}/ (previews.serving): the longest one exchange with a sandbox may
# last, connect to the body's last byte; the longest it may wait at a time (to connect, for the
# answer to begin, between bytes); requests of one session served at once; and each session's
# request rate.
PREVIEW_PROXY_SECONDS = env.float("MARKETPLACE_PREVIEW_PROXY_SECONDS", default=30.0)
PREVIEW_PROXY_WAIT_SECONDS = env.float("MARKETPLACE_PREVIEW_PROXY_WAIT_SECONDS", default=10.0)
PREVIEW_CONCURRENT_REQUESTS = env.int("MARKETPLACE_PREVIEW_CONCURRENT_REQUESTS", default=4)
# Preview requests one web process serves at once (proxied or streamed), whatever the sessions:
# its other threads stay for the API, the admin and the webhooks. Past it, 503 previews-busy.
PREVIEW_PROCESS_REQUESTS = env.int("MARKETPLACE_PREVIEW_PROCESS_REQUESTS", default=4)
PREVIEW_REQUEST_RATE = env.str("MARKETPLACE_PREVIEW_REQUEST_RATE", default="600/min")
# The origin preview URLs are built on (a separate one keeps sandbox pages further from the
# platform's cookies); empty, the platform's own host.
PREVIEW_BASE_URL = env.str("MARKETPLACE_PREVIEW_BASE_URL", default="")
# Local provisioner: sockets and the verified copies of preview material.
PREVIEW_DIR = Path(env.str("MARKETPLACE_PREVIEW_DIR", default=str(DATA_DIR / "previews")))
PREVIEW_SANDBOX_MEMORY_BYTES = env.int(
    "MARKETPLACE_PREVIEW_SANDBOX_MEMORY_BYTES", default=256 * 1024 * 1024
)
PREVIEW_SANDBOX_PROCESSES = env.int("MARKETPLACE_PREVIEW_SANDBOX_PROCESSES", default=32)
PREVIEW_SANDBOX_CPU_SECONDS = env.int("MARKETPLACE_PREVIEW_SANDBOX_CPU_SECONDS", default=120)
PREVIEW_SANDBOX_TMPFS_BYTES = env.int(
    "MARKETPLACE_PREVIEW_SANDBOX_TMPFS_BYTES", default=16 * 1024 * 1024
)
PREVIEW_MATERIAL_MAX_BYTES = env.int(
    "MARKETPLACE_PREVIEW_MATERIAL_MAX_BYTES", default=256 * 1024 * 1024
)
PREVIEW_MATERIAL_MAX_FILES = env.int("MARKETPLACE_PREVIEW_MATERIAL_MAX_FILES", default=1000)
# Kubernetes provisioner (previews.provisioners.kubernetes, docs/previews-kubernetes.md).
PREVIEW_KUBE_API_URL = env.str("MARKETPLACE_PREVIEW_KUBE_API_URL", default="")
PREVIEW_KUBE_TOKEN_FILE = env.str("MARKETPLACE_PREVIEW_KUBE_TOKEN_FILE", default="")
PREVIEW_KUBE_CA_FILE = env.str("MARKETPLACE_PREVIEW_KUBE_CA_FILE", default="")
PREVIEW_KUBE_NAMESPACE_PREFIX = env.str(
    "MARKETPLACE_PREVIEW_KUBE_NAMESPACE_PREFIX", default="preview-"
)
PREVIEW_KUBE_IMAGE = env.str("MARKETPLACE_PREVIEW_KUBE_IMAGE", default="")
PREVIEW_KUBE_CPU = env.str("MARKETPLACE_PREVIEW_KUBE_CPU", default="500m")
PREVIEW_KUBE_MEMORY = env.str("MARKETPLACE_PREVIEW_KUBE_MEMORY", default="256Mi")
PREVIEW_KUBE_STORAGE_CIDRS = env.list("MARKETPLACE_PREVIEW_KUBE_STORAGE_CIDRS", default=[])
PREVIEW_KUBE_PLATFORM_NAMESPACE = env.str(
    "MARKETPLACE_PREVIEW_KUBE_PLATFORM_NAMESPACE", default="marketplace"
)
PREVIEW_KUBE_TIMEOUT_SECONDS = env.float("MARKETPLACE_PREVIEW_KUBE_TIMEOUT_SECONDS", default=10.0)
# The preview node pool: sandboxes get a nodeSelector and a toleration of its label and taint
# `marketplace.preview/pool=<value>`; empty, they go wherever the scheduler puts them.
PREVIEW_KUBE_NODE_POOL = env.str("MARKETPLACE_PREVIEW_KUBE_NODE_POOL", default="")
# A RuntimeClass for a stronger boundary than namespaces (gVisor, Kata); empty, the default.
PREVIEW_KUBE_RUNTIME_CLASS = env.str("MARKETPLACE_PREVIEW_KUBE_RUNTIME_CLASS", default="")
_preview_problems = [
    f"{name} must be at least {low}, not {value}"
    for name, value, low in (
        ("MARKETPLACE_PREVIEW_MAX_TTL_SECONDS", PREVIEW_MAX_TTL_SECONDS, 60),
        ("MARKETPLACE_PREVIEW_MAX_OPEN_PER_BUYER", PREVIEW_MAX_OPEN_PER_BUYER, 1),
        ("MARKETPLACE_PREVIEW_MAX_STARTED_PER_HOUR", PREVIEW_MAX_STARTED_PER_HOUR, 1),
        ("MARKETPLACE_PREVIEW_CAPACITY", PREVIEW_CAPACITY, 0),
        ("MARKETPLACE_PREVIEW_PROCESS_REQUESTS", PREVIEW_PROCESS_REQUESTS, 1),
        ("MARKETPLACE_PREVIEW_READY_WAIT_SECONDS", PREVIEW_READY_WAIT_SECONDS, 0),
        ("MARKETPLACE_PREVIEW_START_TIMEOUT_SECONDS", PREVIEW_START_TIMEOUT_SECONDS, 1),
        ("MARKETPLACE_PREVIEW_SANDBOX_PROCESSES", PREVIEW_SANDBOX_PROCESSES, 4),
        ("MARKETPLACE_PREVIEW_SANDBOX_MEMORY_BYTES", PREVIEW_SANDBOX_MEMORY_BYTES, 32 * 1024**2),
        ("MARKETPLACE_PREVIEW_SANDBOX_CPU_SECONDS", PREVIEW_SANDBOX_CPU_SECONDS, 1),
        ("MARKETPLACE_PREVIEW_SANDBOX_TMPFS_BYTES", PREVIEW_SANDBOX_TMPFS_BYTES, 1024**2),
        ("MARKETPLACE_PREVIEW_PROXY_SECONDS", PREVIEW_PROXY_SECONDS, 1),
        ("MARKETPLACE_PREVIEW_PROXY_WAIT_SECONDS", PREVIEW_PROXY_WAIT_SECONDS, 1),
        ("MARKETPLACE_PREVIEW_CONCURRENT_REQUESTS", PREVIEW_CONCURRENT_REQUESTS, 1),
    )
    if value < low
]


def _preview_rate_problem(value: str) -> str | None:
    from django.core.exceptions import ImproperlyConfigured

    from marketplace.ratelimit import parse_rate

    try:
        parse_rate(value)
    except ImproperlyConfigured as exc:
        return f"MARKETPLACE_PREVIEW_REQUEST_RATE: {exc}"
    return None


if _rate_problem := _preview_rate_problem(PREVIEW_REQUEST_RATE):
    _preview_problems.append(_rate_problem)
if PREVIEW_PROVISIONER not in ("local", "kubernetes"):
    _preview_problems.append(
        f"MARKETPLACE_PREVIEW_PROVISIONER is {PREVIEW_PROVISIONER!r}; use local or kubernetes"
    )
if _preview_problems:
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured("; ".join(_preview_problems))
# The runbooks' preview pool network: passed to the pool's nodes as annotations and a selector.
PREVIEW_SUBNET_IDS = env.list("MARKETPLACE_PREVIEW_SUBNET_IDS", default=[])
PREVIEW_SECURITY_GROUP = env.str("MARKETPLACE_PREVIEW_SECURITY_GROUP", default="")

# --- Beat schedule -----------------------------------------------------------------------------

CELERY_BEAT_SCHEDULE = {
    # Seals what lost wake-ups left unsealed (audit.sealer).
    "audit-seal": {
        "task": "audit.tasks.audit_seal",
        "schedule": AUDIT_SEAL_SECONDS,
        "options": {"expires": max(AUDIT_SEAL_SECONDS - 0.5, 1.0)},
    },
    # Signs the audit chain's head and stores the checkpoint's witness copy (audit.checkpoints).
    "audit-checkpoint": {
        "task": "audit.tasks.checkpoint_create",
        "schedule": AUDIT_CHECKPOINT_SECONDS,
        "options": {"expires": max(AUDIT_CHECKPOINT_SECONDS - 1.0, 1.0)},
    },
    # Exports each UTC day not exported yet (normally yesterday) with its signed digest.
    "audit-export-nightly": {
        "task": "audit.tasks.audit_exports_catch_up",
        "schedule": crontab(hour=0, minute=30),
    },
    # Pushes what a lost wake-up or a failed task left behind to the Kernel (audit.fanout).
    "audit-push-to-kernel": {
        "task": "audit.tasks.kernel_push",
        "schedule": 60.0,
        "options": {"expires": 55},
    },
    # A manifest whose check found the Kernel unreachable is checked again until it answers.
    "catalog-reverify-manifests": {
        "task": "catalog.tasks.manifests_reverify_unavailable",
        "schedule": crontab(minute="*/10"),
    },
    # Re-reads every active SKU's artifact from storage and compares it with its recorded hash.
    "catalog-check-artifact-integrity": {
        "task": "catalog.tasks.artifacts_check_integrity",
        "schedule": crontab(hour=3, minute=17),
    },
    # Removes stored uploads that no artifact refers to (a form sent back after its upload).
    "catalog-sweep-orphan-artifacts": {
        "task": "catalog.tasks.artifact_orphans_delete",
        "schedule": crontab(hour=4, minute=7),
    },
    # Webhook events whose processing failed (backoff elapsed) or whose enqueue was lost.
    "orders-webhooks-retry": {
        "task": "orders.tasks.webhooks_retry_due",
        "schedule": 30.0,
        "options": {"expires": 25},
    },
    # Ledger entries Finance has not acknowledged yet (it was down): sent again.
    "orders-finance-replay": {
        "task": "orders.tasks.finance_replay_due",
        "schedule": 30.0,
        "options": {"expires": 25},
    },
    # Partner webhook deliveries due a retry, or whose hand-over to a worker was lost.
    "orders-partner-webhooks-retry": {
        "task": "orders.partner_webhooks.tasks.partner_webhooks_retry_due",
        "schedule": 30.0,
        "options": {"expires": 25},
    },
    "orders-idempotency-keys-expire": {
        "task": "orders.tasks.idempotency_keys_purge",
        "schedule": crontab(minute=23),
    },
    "orders-metrics-refresh": {
        "task": "orders.tasks.orders_metrics_refresh",
        "schedule": 30.0,
        "options": {"expires": 25},
    },
    # Refunded or disputed orders whose licenses or packages a lost hand-over left active.
    "licensing-revocation-sweep": {
        "task": "licensing.tasks.revocation_sweep",
        "schedule": 60.0,
        "options": {"expires": 55},
    },
    # Released orders without a license or delivery, pending deliveries no worker finished:
    # a lost hand-over, a crash, or the end of a maintenance window.
    "licensing-fulfilment-sweep": {
        "task": "licensing.tasks.fulfilment_sweep",
        "schedule": 60.0,
        "options": {"expires": 55},
    },
    # Partial package files (and, on S3, multipart uploads) that a killed worker left behind.
    "licensing-delivery-spool-sweep": {
        "task": "licensing.tasks.delivery_spool_sweep",
        "schedule": 300.0,
        "options": {"expires": 290},
    },
    # Preview sessions past their expiry, stuck starting, or ended but not torn down.
    "previews-sweep": {
        "task": "previews.tasks.previews_sweep",
        "schedule": 60.0,
        "options": {"expires": 55},
    },
    # The runbooks' hourly collector: the sweep, plus sandboxes no session knows (leaked).
    "previews-gc": {
        "task": "previews.tasks.previews_gc",
        "schedule": crontab(minute=11),
        "options": {"expires": 3000},
    },
    # Pending approval requests past their expiry are marked expired (accounts.approval_services).
    "accounts-approvals-expire": {
        "task": "accounts.tasks.approvals_expire",
        "schedule": 300.0,
        "options": {"expires": 290},
    },
}

# --- Key store ---------------------------------------------------------------------------------

# Where license signing keys are made and used (marketplace/keystore/): "local" (Ed25519,
# sealed in the database), "kms" (AWS KMS, ES256) or "proxy" (an HTTP signing service). Unset,
# it follows what is configured: a KMS key id means kms, a signing endpoint means proxy. Audit
# keys are always local: the audit log must go on recording when a remote signer is down.
KEYSTORE_BACKENDS = ("local", "kms", "proxy")
KEYSTORE_BACKEND = env.str("MARKETPLACE_KEYSTORE_BACKEND", default="") or (
    "kms" if LICENSE_SIGNER_KEY_ID else "proxy" if SIGNING_ENDPOINT else "local"
)
KMS_ENDPOINT_URL = env.str("MARKETPLACE_KMS_ENDPOINT_URL", default="")
KMS_REGION = env.str("MARKETPLACE_KMS_REGION", default=S3_REGION)
SIGNING_TOKEN = env.str("MARKETPLACE_SIGNING_TOKEN", default="")
# Connect and read timeout of one call to KMS or the signing proxy.
KEYSTORE_TIMEOUT_SECONDS = env.float("MARKETPLACE_KEYSTORE_TIMEOUT_SECONDS", default=5.0)

if KEYSTORE_BACKEND not in KEYSTORE_BACKENDS:
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(
        f"MARKETPLACE_KEYSTORE_BACKEND must be local, kms or proxy, not {KEYSTORE_BACKEND!r}"
    )
if KEYSTORE_BACKEND == "proxy" and not SIGNING_ENDPOINT:
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(
        "MARKETPLACE_KEYSTORE_BACKEND=proxy needs MARKETPLACE_SIGNING_ENDPOINT (the signing "
        "service's base URL)"
    )

# --- API ---------------------------------------------------------------------------------------

# Every JSON body (the API's and the webhook's): larger is a 413, deeper a 400
# (marketplace/api/parsers.py). Python's own parser and encoder recurse once per level, so the
# depth stays far below the interpreter's recursion limit.
JSON_MAX_BYTES = env.int("MARKETPLACE_JSON_MAX_BYTES", default=1024 * 1024)
JSON_MAX_DEPTH = env.int("MARKETPLACE_JSON_MAX_DEPTH", default=32)
if not 1 <= JSON_MAX_DEPTH <= 200 or JSON_MAX_BYTES < 1024:
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(
        "MARKETPLACE_JSON_MAX_DEPTH takes 1 to 200 and MARKETPLACE_JSON_MAX_BYTES at least 1024"
    )


def _rate(variable: str, default: str) -> str:
    from django.core.exceptions import ImproperlyConfigured

    from marketplace.ratelimit import parse_rate

    value = env.str(variable, default=default)
    try:
        parse_rate(value)
    except ImproperlyConfigured as exc:
        raise ImproperlyConfigured(f"{variable}: {exc}") from None
    return value


# Each limit is per client: the signed-in buyer, else the client address (NUM_PROXIES below).
THROTTLE_RATES = {
    # Every API request: anonymous callers per address, signed-in buyers per buyer.
    "anon": _rate("MARKETPLACE_THROTTLE_ANON", "1200/min"),
    "user": _rate("MARKETPLACE_THROTTLE_USER", "2400/min"),
    # API requests whose credentials are refused (401), per address; over it, that address's
    # requests with credentials are refused until the window closes.
    "auth_failure": _rate("MARKETPLACE_THROTTLE_AUTH_FAILURE", "30/min"),
    # Every write of a buyer as one budget: each appends an audit event, kept for good.
    "buyer_write": _rate("MARKETPLACE_THROTTLE_BUYER_WRITE", "120/hour"),
    # Views' own scopes (their throttle_scope), counted on top of the above.
    "checkout": _rate("MARKETPLACE_THROTTLE_CHECKOUT", "10/min"),
    "download_link": _rate("MARKETPLACE_THROTTLE_DOWNLOAD_LINK", "30/min"),
    "license_verify": _rate("MARKETPLACE_THROTTLE_LICENSE_VERIFY", "120/min"),
    "jwks": _rate("MARKETPLACE_THROTTLE_JWKS", "60/min"),
    # Paths outside DRF, per address (marketplace.ratelimit.PATH_LIMITS).
    "webhook": _rate("MARKETPLACE_THROTTLE_WEBHOOK", "1800/min"),
    "health": _rate("MARKETPLACE_THROTTLE_HEALTH", "600/min"),
    "metrics": _rate("MARKETPLACE_THROTTLE_METRICS", "120/min"),
    "staff_login": _rate("MARKETPLACE_THROTTLE_STAFF_LOGIN", "20/min"),
}

REST_FRAMEWORK = {
    # A provider JWT first (it answers only tokens shaped like one), then API tokens.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.api.authentication.ProviderTokenAuthentication",
        "marketplace.api.authentication.BearerTokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["marketplace.api.parsers.JSONParser"],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    # Atomic counters in Redis (marketplace/ratelimit.py); docs/api.md lists the limits.
    # One throttle counts every limit of a request at once: a refused one counts against none.
    "DEFAULT_THROTTLE_CLASSES": ["marketplace.api.throttling.RequestRateThrottle"],
    "DEFAULT_THROTTLE_RATES": THROTTLE_RATES,
    # Clients are told apart by REMOTE_ADDR, or by the X-Forwarded-For entry that this many
    # trusted proxies in front of the platform add; the rest of that header is the client's
    # own say and is not trusted.
    "NUM_PROXIES": env.int("MARKETPLACE_NUM_PROXIES", default=0),
    "DEFAULT_SCHEMA_CLASS": "marketplace.api.schema.MarketplaceAutoSchema",
    "EXCEPTION_HANDLER": "marketplace.api.problems.exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    "DATETIME_FORMAT": "iso-8601",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Marketplace API",
    "DESCRIPTION": (
        "Browse, preview, buy and download digital goods. Errors are RFC 9457 problem details."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # Choice sets whose field name another model's uses too ("status", "kind").
    "ENUM_NAME_OVERRIDES": {
        "PreviewStatusEnum": "previews.models.SessionStatus",
        "PreviewKindEnum": "previews.models.MaterialKind",
    },
    # What every operation of a kind answers, and request bodies' unknown members refused:
    # marketplace.api.schema.
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "marketplace.api.schema.postprocess",
    ],
}

API_TOKEN_TOUCH_SECONDS = 60

# --- Auth, i18n --------------------------------------------------------------------------------

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "admin:login"

# --- Identity provider (docs/identity.md) -----------------------------------------------------

# Staff sign in through the company's OpenID Connect provider: discovery from the issuer, the
# authorization-code flow with PKCE, as this client. Unset: no provider sign-in (passwords in
# dev only). Buyers' access tokens from the same provider are accepted on the API when
# OIDC_API_AUDIENCE (their `aud`) is set.
OIDC_ISSUER = env.str("MARKETPLACE_OIDC_ISSUER", default="")
OIDC_CLIENT_ID = env.str("MARKETPLACE_OIDC_CLIENT_ID", default="")
OIDC_CLIENT_SECRET = env.str("MARKETPLACE_OIDC_CLIENT_SECRET", default="")
OIDC_API_AUDIENCE = env.str("MARKETPLACE_OIDC_API_AUDIENCE", default="")
OIDC_SCOPES = env.str("MARKETPLACE_OIDC_SCOPES", default="openid email profile")
# The claim holding the provider's groups, and which group is which role here (JSON object,
# group name to role name; groups it does not name give no role).
OIDC_ROLES_CLAIM = env.str("MARKETPLACE_OIDC_ROLES_CLAIM", default="groups")
OIDC_ROLE_MAP = env.json("MARKETPLACE_OIDC_ROLE_MAP", default={})
# The claim naming the partner (by slug) a Partner staff member works for.
OIDC_PARTNER_CLAIM = env.str("MARKETPLACE_OIDC_PARTNER_CLAIM", default="")
# A staff sign-in must show a second factor: an `amr` value of OIDC_MFA_AMR (RFC 8176) or an
# `acr` of OIDC_MFA_ACR. On in staging and production, which refuse to start without it.
OIDC_REQUIRE_MFA = env.bool("MARKETPLACE_OIDC_REQUIRE_MFA", default=SERVICE_ENV != "dev")
OIDC_MFA_AMR = env.list(
    "MARKETPLACE_OIDC_MFA_AMR",
    default=["mfa", "otp", "hwk", "swk", "sc", "sms", "tel", "fpt", "face", "iris", "retina"],
)
OIDC_MFA_ACR = env.list("MARKETPLACE_OIDC_MFA_ACR", default=[])
# A staff session is renewed silently (prompt=none) this often: roles are synced again, and
# an account disabled at the provider loses access here.
OIDC_RENEW_SECONDS = env.int("MARKETPLACE_OIDC_RENEW_SECONDS", default=900)
OIDC_TIMEOUT_SECONDS = env.float("MARKETPLACE_OIDC_TIMEOUT_SECONDS", default=5.0)
# The provider's JWK Set is fetched again at least this often (a withdrawn key stops working).
OIDC_JWKS_MAX_AGE_SECONDS = env.int("MARKETPLACE_OIDC_JWKS_MAX_AGE_SECONDS", default=3600)
# The `typ` an access token on the API must carry (RFC 9068); empty: not checked, for a
# provider that marks its access tokens as plain JWTs (then only `aud` tells them apart).
OIDC_API_TOKEN_TYPES = env.list(
    "MARKETPLACE_OIDC_API_TOKEN_TYPES", default=["at+jwt", "application/at+jwt"]
)
# A staff session ends this long after sign-in whatever its renewals, and after
# MARKETPLACE_STAFF_SESSION_IDLE_MINUTES without a request.
# (accounts.oidc.StaffSessionRenewal keeps both, on the admin's pages.)
STAFF_SESSION_SECONDS = env.int("MARKETPLACE_STAFF_SESSION_HOURS", default=8) * 3600
STAFF_SESSION_IDLE_SECONDS = env.int("MARKETPLACE_STAFF_SESSION_IDLE_MINUTES", default=30) * 60
SESSION_COOKIE_AGE = STAFF_SESSION_SECONDS
SESSION_COOKIE_SAMESITE = "Lax"

# Staff sign-in: after MARKETPLACE_STAFF_LOCKOUT_FAILURES failed attempts for one account from
# one client address, that pair is locked out for MARKETPLACE_STAFF_LOCKOUT_MINUTES (each
# attempt during the lockout starts it again); a success clears the count. django-axes keeps
# the counts in the database (admin: Axes). Guessing across accounts from one address is held
# by the `staff_login` rate instead.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "accounts.oidc.StaffOIDCBackend",
    "accounts.backends.BreakGlassBackend",
    # Password sign-in: dev only (production keeps break-glass grants alone: production.py).
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env.int("MARKETPLACE_STAFF_LOCKOUT_FAILURES", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env.int("MARKETPLACE_STAFF_LOCKOUT_MINUTES", default=15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
# The admin's form posts `username` (the e-mail address: User.USERNAME_FIELD is `email`).
AXES_USERNAME_FORM_FIELD = "username"
# The same client address as the rate limits (MARKETPLACE_NUM_PROXIES).
AXES_CLIENT_IP_CALLABLE = "marketplace.clients.client_ip"
AXES_LOCKOUT_CALLABLE = "marketplace.ratelimit.staff_lockout_response"

# --- Approvals and break-glass ------------------------------------------------------------------

# Two-person approval (docs/approvals.md): a sensitive change waits until this many distinct
# people in all agree: the requester plus THRESHOLD - 1 approvers holding the kind's role. At
# least 2 in staging and production; 1 (dev only) applies a request as soon as it is filed.
APPROVAL_THRESHOLD = env.int("MARKETPLACE_APPROVAL_THRESHOLD", default=2)
# A request not decided within this many hours expires (a beat task marks it).
APPROVAL_TTL_HOURS = env.int("MARKETPLACE_APPROVAL_TTL_HOURS", default=24)
# Refunds above this amount, in minor units of the order's currency (50000 is 500.00 USD),
# wait for a second person of Finance; at or under it they are made at once.
APPROVAL_REFUND_MINOR = env.int("MARKETPLACE_APPROVAL_REFUND_MINOR", default=50000)
# The longest window a break-glass password login may be granted for (`breakglass_grant`).
BREAKGLASS_MAX_HOURS = env.int("MARKETPLACE_BREAKGLASS_MAX_HOURS", default=4)

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"

# One Content-Security-Policy for every answer: the admin, the API docs, the local pages and
# the API itself load scripts only from this origin (and the local checkout page's own script by
# its nonce), are never framed, and post forms only to this origin. Inline styles stay allowed:
# the admin's widgets set style attributes, and a style cannot run code.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF, NONCE],
        "style-src": [SELF, "'unsafe-inline'"],
        "img-src": [SELF, "data:"],
        "font-src": [SELF],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [NONE],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    },
}
# Payment pages a page of ours may send a buyer to or embed (Stripe Checkout, say).
ALLOWED_PAYMENT_ORIGINS = env.list("MARKETPLACE_ALLOWED_PAYMENT_ORIGINS", default=[])
for _directive in ("connect-src", "form-action", "frame-src"):
    CONTENT_SECURITY_POLICY["DIRECTIVES"].setdefault(_directive, [SELF]).extend(
        ALLOWED_PAYMENT_ORIGINS
    )
CONTENT_SECURITY_POLICY_REPORT_URI = env.str("MARKETPLACE_CSP_REPORT_URI", default="")
if CONTENT_SECURITY_POLICY_REPORT_URI:
    CONTENT_SECURITY_POLICY["DIRECTIVES"]["report-uri"] = [CONTENT_SECURITY_POLICY_REPORT_URI]

# --- Metrics -----------------------------------------------------------------------------------

# The bearer token a scraper sends for /metrics. Unset, /metrics answers only clients on this
# machine, in dev only; production refuses to start without it or MARKETPLACE_METRICS_PORT.
METRICS_TOKEN = env.str("MARKETPLACE_METRICS_TOKEN", default="")
# Set, the metrics are served by `scripts/manage metrics_serve` on this port and address (a
# process of its own, reading PROMETHEUS_MULTIPROC_DIR), and the web server's /metrics is 404.
METRICS_PORT = env.int("MARKETPLACE_METRICS_PORT", default=0)
METRICS_ADDR = env.str("MARKETPLACE_METRICS_ADDR", default="127.0.0.1")
# How long one rendering of the metrics answers every scrape: N scrapers cost one rendering.
METRICS_CACHE_SECONDS = env.float("MARKETPLACE_METRICS_CACHE_SECONDS", default=1.0)

# --- Logging -----------------------------------------------------------------------------------

LOG_LEVEL = env.str("MARKETPLACE_LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s"},
    },
    "filters": {
        "refusal_without_traceback": {"()": "marketplace.logging.RefusalWithoutTraceback"},
        "outage_without_traceback": {"()": "marketplace.middleware.OutageWithoutTraceback"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # A 403 is one warning line: Django attaches the PermissionDenied a view raised to its
        # record here. (It logs a CSRF refusal on django.security.csrf with no traceback.)
        "django.request": {"filters": ["refusal_without_traceback", "outage_without_traceback"]},
        "django.db.backends": {"level": "WARNING"},
        "botocore": {"level": "WARNING"},
        # django-axes says at every start which lockout it applies; its lockouts stay warnings.
        "axes.apps": {"level": "WARNING"},
        "urllib3": {"level": "WARNING"},
    },
}
