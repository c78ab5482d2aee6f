"""Staging and production: no embedded default and no insecure value is accepted.

Every problem found is collected and reported at once, each naming the variable to set, so an
operator fixes a deployment in one pass instead of one restart per missing variable.
"""

import base64
import binascii
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

from config.settings.base import *

_problems: list[str] = []


def _refuse(variable: str, why: str) -> None:
    _problems.append(f"{variable}: {why}")


if SECRET_KEY == DEV_SECRET_KEY:
    _refuse("MARKETPLACE_SECRET_KEY", "not set (the development key is refused)")
elif len(SECRET_KEY) < 50 or len(set(SECRET_KEY)) < 5:
    _refuse("MARKETPLACE_SECRET_KEY", "too weak: use at least 50 random characters")

if DEBUG:
    _refuse("MARKETPLACE_DEBUG", "must be off")

if not env.list("MARKETPLACE_ALLOWED_HOSTS", default=[]):
    _refuse("MARKETPLACE_ALLOWED_HOSTS", "not set (list the host names the API is served on)")
elif "*" in ALLOWED_HOSTS:
    _refuse("MARKETPLACE_ALLOWED_HOSTS", "must not contain '*'")

if not DATABASE_URL:
    _refuse("MARKETPLACE_DATABASE_URL", "not set (the embedded SQLite database is refused)")
elif not DATABASES["default"]["ENGINE"].endswith("postgresql"):
    _refuse("MARKETPLACE_DATABASE_URL", "must be a PostgreSQL URL (postgres://...)")

if not REDIS_URL:
    _refuse("MARKETPLACE_REDIS_URL", "not set (the local-memory cache is refused)")

if urlsplit(BROKER_URL).scheme in ("filesystem", "memory", ""):
    _refuse("MARKETPLACE_BROKER_URL", "not set (the server-less broker is refused)")

if not S3_BUCKET:
    _refuse("MARKETPLACE_S3_BUCKET", "not set (local file storage is refused)")

if not KERNEL_URL:
    _refuse("MARKETPLACE_KERNEL_URL", "not set (the local manifest verifier is refused)")
elif urlsplit(KERNEL_URL).scheme != "https":
    _refuse("MARKETPLACE_KERNEL_URL", "must be an https:// URL")
if not KERNEL_CERT:
    _refuse("MARKETPLACE_KERNEL_CERT", "not set (the Kernel requires an mTLS client certificate)")
if not KERNEL_KEY:
    _refuse("MARKETPLACE_KERNEL_KEY", "not set (the Kernel requires an mTLS client key)")

if not KEYSTORE_MASTER_KEY:
    _refuse(
        "MARKETPLACE_KEYSTORE_MASTER_KEY",
        "not set (the development master-key file is refused; 32 random bytes, base64)",
    )
else:
    try:
        _master_key_length = len(base64.b64decode(KEYSTORE_MASTER_KEY, validate=True))
    except binascii.Error:
        _master_key_length = 0
    if _master_key_length != 32:
        _refuse("MARKETPLACE_KEYSTORE_MASTER_KEY", "must be 32 random bytes in base64")

if KEYSTORE_BACKEND == "local":
    if env.str("MARKETPLACE_KEYSTORE_BACKEND", default=""):
        _refuse(
            "MARKETPLACE_KEYSTORE_BACKEND",
            "local is refused (license keys in the database); use kms or proxy",
        )
    else:
        _refuse(
            "MARKETPLACE_LICENSE_SIGNER_KEY_ID",
            "not set (the local key store is refused for licenses: set the KMS key id or ARN, "
            "or MARKETPLACE_SIGNING_ENDPOINT for a signing proxy)",
        )
elif KEYSTORE_BACKEND == "kms":
    if KMS_ENDPOINT_URL and urlsplit(KMS_ENDPOINT_URL).scheme != "https":
        _refuse("MARKETPLACE_KMS_ENDPOINT_URL", "must be an https:// URL")
elif KEYSTORE_BACKEND == "proxy":
    if urlsplit(SIGNING_ENDPOINT).scheme != "https":
        _refuse("MARKETPLACE_SIGNING_ENDPOINT", "must be an https:// URL")
    if not SIGNING_TOKEN:
        _refuse("MARKETPLACE_SIGNING_TOKEN", "not set (the signing proxy requires a bearer token)")

if not DELIVERY_KMS_KEY_ID:
    _refuse(
        "MARKETPLACE_DELIVERY_KMS_KEY_ID",
        "not set (delivery data keys wrapped by the local master key are refused; "
        "or set MARKETPLACE_S3_KMS_KEY_ID)",
    )

if not AUDIT_BUCKET:
    _refuse("MARKETPLACE_AUDIT_BUCKET", "not set (audit exports to local files are refused)")
elif AUDIT_RETENTION_DAYS < 1:
    _refuse("MARKETPLACE_AUDIT_RETENTION_DAYS", "must be at least 1 day")

if not STRIPE_SECRET_KEY:
    _refuse("MARKETPLACE_STRIPE_SECRET_KEY", "not set (the local test gateway is refused)")
if not STRIPE_WEBHOOK_SECRETS:
    _refuse("MARKETPLACE_STRIPE_WEBHOOK_SECRET", "not set (webhooks could not be verified)")
for _name, _url in (
    ("MARKETPLACE_PUBLIC_URL", PUBLIC_URL),
    ("MARKETPLACE_CHECKOUT_SUCCESS_URL", CHECKOUT_SUCCESS_URL),
    ("MARKETPLACE_CHECKOUT_CANCEL_URL", CHECKOUT_CANCEL_URL),
):
    if urlsplit(_url).scheme != "https":
        _refuse(_name, "must be an https:// URL")

if not FINANCE_URL:
    _refuse("MARKETPLACE_FINANCE_URL", "not set (the local ledger table is refused)")
elif urlsplit(FINANCE_URL).scheme != "https":
    _refuse("MARKETPLACE_FINANCE_URL", "must be an https:// URL")
if not FINANCE_TOKEN:
    _refuse("MARKETPLACE_FINANCE_TOKEN", "not set (Finance requires a bearer token)")

# Settings that would turn a safety off.
if DELIVERY_RETENTION_DAYS < 1:
    _refuse(
        "MARKETPLACE_DELIVERY_RETENTION_DAYS",
        "must be at least 1 day (0 turns the packages' object lock off)",
    )
if not 0 < STRIPE_WEBHOOK_TOLERANCE_SECONDS <= 3600:
    _refuse(
        "MARKETPLACE_STRIPE_WEBHOOK_TOLERANCE_SECONDS",
        "must be 1 to 3600 seconds (a wider window lets a captured webhook be replayed later)",
    )
SECURE_HSTS_SECONDS = env.int("MARKETPLACE_HSTS_SECONDS", default=31536000)
if SECURE_HSTS_SECONDS < 1:
    _refuse("MARKETPLACE_HSTS_SECONDS", "must be at least 1 (0 turns HSTS off)")

if _problems:
    raise ImproperlyConfigured(
        f"Refusing to start with MARKETPLACE_SERVICE_ENV={SERVICE_ENV}:\n  - "
        + "\n  - ".join(_problems)
    )

STORAGES["staticfiles"] = {
    "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage",
}

# TLS ends at the load balancer, which sets X-Forwarded-Proto.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = True
# Probes and scrapers talk plain HTTP inside the cluster.
SECURE_REDIRECT_EXEMPT = [r"^health$", r"^metrics$"]
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = env.bool("MARKETPLACE_HSTS_PRELOAD", default=False)
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
CSRF_COOKIE_HTTPONLY = True

# Preloading HSTS binds the whole domain for months, so it is an operator's explicit choice
# (MARKETPLACE_HSTS_PRELOAD=1), not something `check --deploy` should force.
SILENCED_SYSTEM_CHECKS = [] if SECURE_HSTS_PRELOAD else ["security.W021"]
