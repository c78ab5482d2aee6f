"""Staging and production: no embedded default and no insecure value is accepted.

Every problem found is collected and reported at once, each naming the variable to set, so an
operator fixes a deployment in one pass instead of one restart per missing variable.
"""

import re
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

from config.guard import http_url_weakness, master_key_weakness, secret_weakness
from config.settings.base import *

_problems: list[str] = []


def _refuse(variable: str, why: str) -> None:
    _problems.append(f"{variable}: {why}")


def _refuse_weak_secret(variable: str, value: str, *, min_length: int, min_bits: float) -> None:
    why = secret_weakness(value, min_length=min_length, min_bits=min_bits, known=(DEV_SECRET_KEY,))
    if why:
        _refuse(variable, why)


def _refuse_http(variable: str, url: str) -> None:
    why = http_url_weakness(url)
    if why:
        _refuse(variable, why)


if SECRET_KEY == DEV_SECRET_KEY:
    _refuse("MARKETPLACE_SECRET_KEY", "not set (the development key is refused)")
else:
    _refuse_weak_secret("MARKETPLACE_SECRET_KEY", SECRET_KEY, min_length=50, min_bits=200)

if DEBUG:
    _refuse("MARKETPLACE_DEBUG", "must be off")

if not env.list("MARKETPLACE_ALLOWED_HOSTS", default=[]):
    _refuse("MARKETPLACE_ALLOWED_HOSTS", "not set (list the host names the API is served on)")
elif "*" in ALLOWED_HOSTS:
    _refuse("MARKETPLACE_ALLOWED_HOSTS", "must not contain '*'")
for _origin in ALLOWED_PAYMENT_ORIGINS:
    if urlsplit(_origin).scheme != "https":
        _refuse("MARKETPLACE_ALLOWED_PAYMENT_ORIGINS", f"{_origin!r} must be an https:// origin")
for _origin in CSRF_TRUSTED_ORIGINS:
    if urlsplit(_origin).scheme != "https":
        _refuse("MARKETPLACE_CSRF_TRUSTED_ORIGINS", f"{_origin!r} must be an https:// origin")

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
if S3_ENDPOINT_URL:
    _refuse_http("MARKETPLACE_S3_ENDPOINT_URL", S3_ENDPOINT_URL)
if env.str("MARKETPLACE_AUDIT_S3_ENDPOINT_URL", default=""):
    _refuse_http("MARKETPLACE_AUDIT_S3_ENDPOINT_URL", AUDIT_S3_ENDPOINT_URL)

if not KERNEL_URL:
    _refuse("MARKETPLACE_KERNEL_URL", "not set (the local manifest verifier is refused)")
else:
    _refuse_http("MARKETPLACE_KERNEL_URL", KERNEL_URL)
if MODERATION_BACKEND == "http":
    _refuse_http("MARKETPLACE_MODERATION_URL", MODERATION_URL)
if not KERNEL_CERT:
    _refuse("MARKETPLACE_KERNEL_CERT", "not set (the Kernel requires an mTLS client certificate)")
if not KERNEL_KEY:
    _refuse("MARKETPLACE_KERNEL_KEY", "not set (the Kernel requires an mTLS client key)")

if not KEYSTORE_MASTER_KEY:
    _refuse(
        "MARKETPLACE_KEYSTORE_MASTER_KEY",
        "not set (the development master-key file is refused; 32 random bytes, base64)",
    )
elif _why := master_key_weakness(KEYSTORE_MASTER_KEY):
    _refuse("MARKETPLACE_KEYSTORE_MASTER_KEY", _why)

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
elif KEYSTORE_BACKEND == "proxy" and not SIGNING_TOKEN:
    _refuse("MARKETPLACE_SIGNING_TOKEN", "not set (the signing proxy requires a bearer token)")
# Delivery data keys use KMS whatever backend signs licenses.
if KMS_ENDPOINT_URL:
    _refuse_http("MARKETPLACE_KMS_ENDPOINT_URL", KMS_ENDPOINT_URL)
if SIGNING_ENDPOINT:
    _refuse_http("MARKETPLACE_SIGNING_ENDPOINT", SIGNING_ENDPOINT)
if SIGNING_TOKEN:
    _refuse_weak_secret("MARKETPLACE_SIGNING_TOKEN", SIGNING_TOKEN, min_length=32, min_bits=128)

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

# Stripe's own prefixes: a live key in prod; staging may take payments in test mode.
_STRIPE_KEY_PREFIXES = ("sk_live_", "rk_live_") if SERVICE_ENV == "prod" else ("sk_", "rk_")
if not STRIPE_SECRET_KEY:
    _refuse("MARKETPLACE_STRIPE_SECRET_KEY", "not set (the local test gateway is refused)")
elif not STRIPE_SECRET_KEY.startswith(_STRIPE_KEY_PREFIXES):
    _refuse(
        "MARKETPLACE_STRIPE_SECRET_KEY",
        f"must be a Stripe key starting with {' or '.join(_STRIPE_KEY_PREFIXES)}",
    )
else:
    _refuse_weak_secret(
        "MARKETPLACE_STRIPE_SECRET_KEY",
        re.sub(r"^[sr]k_(live_|test_)?", "", STRIPE_SECRET_KEY),
        min_length=24,
        min_bits=96,
    )
if not STRIPE_WEBHOOK_SECRETS:
    _refuse("MARKETPLACE_STRIPE_WEBHOOK_SECRET", "not set (webhooks could not be verified)")
for _index, _secret in enumerate(STRIPE_WEBHOOK_SECRETS, start=1):
    # Stripe's endpoint secrets are whsec_ and 32 random characters.
    _why = (
        "must start with whsec_"
        if not _secret.startswith("whsec_")
        else secret_weakness(_secret.removeprefix("whsec_"), min_length=24, min_bits=96)
    )
    if _why:
        _refuse("MARKETPLACE_STRIPE_WEBHOOK_SECRET", f"secret {_index}: {_why}")
if STRIPE_API_BASE:
    _refuse_http("MARKETPLACE_STRIPE_API_BASE", STRIPE_API_BASE)
for _name, _url in (
    ("MARKETPLACE_PUBLIC_URL", PUBLIC_URL),
    ("MARKETPLACE_CHECKOUT_SUCCESS_URL", CHECKOUT_SUCCESS_URL),
    ("MARKETPLACE_CHECKOUT_CANCEL_URL", CHECKOUT_CANCEL_URL),
):
    if urlsplit(_url).scheme != "https":
        _refuse(_name, "must be an https:// URL")

if not FINANCE_URL:
    _refuse("MARKETPLACE_FINANCE_URL", "not set (the local ledger table is refused)")
else:
    _refuse_http("MARKETPLACE_FINANCE_URL", FINANCE_URL)
if not FINANCE_TOKEN:
    _refuse("MARKETPLACE_FINANCE_TOKEN", "not set (Finance requires a bearer token)")
else:
    _refuse_weak_secret("MARKETPLACE_FINANCE_TOKEN", FINANCE_TOKEN, min_length=32, min_bits=128)

# /metrics shows order counts and the platform's traffic: a token, or a listener of its own.
if METRICS_TOKEN:
    _refuse_weak_secret("MARKETPLACE_METRICS_TOKEN", METRICS_TOKEN, min_length=32, min_bits=128)
elif not METRICS_PORT:
    _refuse(
        "MARKETPLACE_METRICS_TOKEN",
        "not set (/metrics would be open to anyone): set the scrapers' bearer token, or "
        "MARKETPLACE_METRICS_PORT to serve the metrics on a port of their own",
    )

# /health/details shows hosts, ports, folders and buckets.
if HEALTH_TOKEN:
    _refuse_weak_secret("MARKETPLACE_HEALTH_TOKEN", HEALTH_TOKEN, min_length=32, min_bits=128)

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
if APPROVAL_THRESHOLD < 2:
    _refuse(
        "MARKETPLACE_APPROVAL_THRESHOLD",
        "must be at least 2 (1 lets one person apply what needs a second person's approval)",
    )
# Staff sign in through the identity provider only; passwords are for break-glass grants.
for _variable, _value in (
    ("MARKETPLACE_OIDC_ISSUER", OIDC_ISSUER),
    ("MARKETPLACE_OIDC_CLIENT_ID", OIDC_CLIENT_ID),
    ("MARKETPLACE_OIDC_CLIENT_SECRET", OIDC_CLIENT_SECRET),
):
    if not _value:
        _refuse(_variable, "not set (staff sign in through the identity provider in production)")
if OIDC_ISSUER:
    _refuse_http("MARKETPLACE_OIDC_ISSUER", OIDC_ISSUER)
if OIDC_API_AUDIENCE and OIDC_API_AUDIENCE == OIDC_CLIENT_ID:
    _refuse(
        "MARKETPLACE_OIDC_API_AUDIENCE",
        "must differ from MARKETPLACE_OIDC_CLIENT_ID (a staff ID token would pass as a buyer's "
        "access token)",
    )
if not OIDC_REQUIRE_MFA:
    _refuse("MARKETPLACE_OIDC_REQUIRE_MFA", "must be on (staff sign-ins need a second factor)")
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "accounts.oidc.StaffOIDCBackend",
    "accounts.backends.BreakGlassBackend",
]
SECURE_HSTS_SECONDS = env.int("MARKETPLACE_HSTS_SECONDS", default=31536000)
if SECURE_HSTS_SECONDS < 31536000:
    _refuse(
        "MARKETPLACE_HSTS_SECONDS",
        "must be at least 31536000, a year (shorter lets a browser fall back to http://)",
    )

if PREVIEW_BASE_URL:
    _refuse_http("MARKETPLACE_PREVIEW_BASE_URL", PREVIEW_BASE_URL)
if PREVIEW_PROVISIONER == "kubernetes" and not PREVIEW_KUBE_IMAGE:
    _refuse("MARKETPLACE_PREVIEW_KUBE_IMAGE", "not set (the image the sandboxes run)")

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
