"""Production refuses embedded defaults and insecure values, naming each variable."""

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management.utils import get_random_secret_key

from config.guard import secret_weakness

BASE_DIR = Path(__file__).resolve().parent.parent.parent
# The development key as base.py spells it (what a careless deployment starts from).
DEV_KEY = "dev-only-marketplace-secret-key-refused-in-production-0123456789abcdef"

PRODUCTION = {
    "MARKETPLACE_SERVICE_ENV": "prod",
    "MARKETPLACE_SECRET_KEY": "xVmxIE81ODE0ShrU7oFkwS9HZXsKLwgxhfag8XxlI5xckcgJrUF4J-FopqstV1Qr",
    "MARKETPLACE_ALLOWED_HOSTS": "api.marketplace.example",
    "MARKETPLACE_DATABASE_URL": "postgres://marketplace@db.internal:5432/marketplace",
    "MARKETPLACE_REDIS_URL": "redis://cache.internal:6379/0",
    "MARKETPLACE_S3_BUCKET": "marketplace-deliveries",
    "MARKETPLACE_KERNEL_URL": "https://kernel.internal",
    "MARKETPLACE_KERNEL_CERT": "/etc/marketplace/kernel.crt",
    "MARKETPLACE_KERNEL_KEY": "/etc/marketplace/kernel.key",
    "MARKETPLACE_KEYSTORE_MASTER_KEY": "y+qXyE1QxdfGViY4i9gD7d6XhbEtNVO6eenQa9+2+l4=",
    "MARKETPLACE_AUDIT_BUCKET": "marketplace-audit",
    "MARKETPLACE_STRIPE_SECRET_KEY": "sk_live_o5STJFWoafN-0JdoBa1q1y0D1ly8pvZkZaBgFyyB4Yhv8Ya",
    "MARKETPLACE_STRIPE_WEBHOOK_SECRET": "whsec_0_onTURDhrF0xFkL_LyDLLBZzVzEUM3D",
    "MARKETPLACE_PUBLIC_URL": "https://api.marketplace.example",
    "MARKETPLACE_FINANCE_URL": "https://finance.internal",
    "MARKETPLACE_FINANCE_TOKEN": "Bu1MUk86eT2Zy8plKFVAnLZF4OAf8UuREtD2W67RHgQ",
    "MARKETPLACE_METRICS_TOKEN": "Jd3vQm9Xc1LrT7pWz5Kb0NhF2sYg8AeU4iOx6CtRwE",
    "MARKETPLACE_LICENSE_SIGNER_KEY_ID": "arn:aws:kms:us-east-1:111122223333:key/license",
    "MARKETPLACE_DELIVERY_KMS_KEY_ID": "arn:aws:kms:us-east-1:111122223333:key/delivery",
    "MARKETPLACE_OIDC_ISSUER": "https://id.example.com",
    "MARKETPLACE_OIDC_CLIENT_ID": "marketplace-staff",
    "MARKETPLACE_OIDC_CLIENT_SECRET": "Qm3xW9zT1cV7bN5kL2pR8sD4fG6hJ0aY",
}


def manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    # Only what the test sets: not the suite's own settings, nor the browser tests' lifting
    # of Django's async check, which `check --deploy` rightly flags.
    inherited = ("DJANGO_SETTINGS_MODULE", "DJANGO_ALLOW_ASYNC_UNSAFE")
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MARKETPLACE_") and k not in inherited
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=BASE_DIR,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_production_with_nothing_set_names_every_missing_variable():
    result = manage("check", MARKETPLACE_SERVICE_ENV="prod")

    assert result.returncode != 0
    assert "Refusing to start with MARKETPLACE_SERVICE_ENV=prod" in result.stderr
    for variable in (
        "MARKETPLACE_SECRET_KEY",
        "MARKETPLACE_ALLOWED_HOSTS",
        "MARKETPLACE_DATABASE_URL",
        "MARKETPLACE_REDIS_URL",
        "MARKETPLACE_BROKER_URL",
        "MARKETPLACE_S3_BUCKET",
        "MARKETPLACE_KERNEL_URL",
        "MARKETPLACE_KERNEL_CERT",
        "MARKETPLACE_KERNEL_KEY",
        "MARKETPLACE_KEYSTORE_MASTER_KEY",
        "MARKETPLACE_AUDIT_BUCKET",
        "MARKETPLACE_STRIPE_SECRET_KEY",
        "MARKETPLACE_STRIPE_WEBHOOK_SECRET",
        "MARKETPLACE_PUBLIC_URL",
        "MARKETPLACE_FINANCE_URL",
        "MARKETPLACE_FINANCE_TOKEN",
        "MARKETPLACE_METRICS_TOKEN",
        "MARKETPLACE_LICENSE_SIGNER_KEY_ID",
        "MARKETPLACE_DELIVERY_KMS_KEY_ID",
        "MARKETPLACE_OIDC_ISSUER",
        "MARKETPLACE_OIDC_CLIENT_ID",
        "MARKETPLACE_OIDC_CLIENT_SECRET",
    ):
        assert f"{variable}: " in result.stderr, variable
    assert "Traceback" not in result.stderr.split("ImproperlyConfigured")[-1]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"MARKETPLACE_DEBUG": "1"}, "MARKETPLACE_DEBUG: must be off"),
        (
            {"MARKETPLACE_OIDC_ISSUER": "http://id.example.com"},
            "MARKETPLACE_OIDC_ISSUER: must be an https:// URL",
        ),
        (
            {"MARKETPLACE_OIDC_REQUIRE_MFA": "0"},
            "MARKETPLACE_OIDC_REQUIRE_MFA: must be on",
        ),
        (
            {"MARKETPLACE_KEYSTORE_MASTER_KEY": "c2hvcnQ="},
            "MARKETPLACE_KEYSTORE_MASTER_KEY: must be 32 random bytes in base64",
        ),
        ({"MARKETPLACE_ALLOWED_HOSTS": "*"}, "MARKETPLACE_ALLOWED_HOSTS: must not contain '*'"),
        ({"MARKETPLACE_SECRET_KEY": "short"}, "MARKETPLACE_SECRET_KEY: too short"),
        (
            {"MARKETPLACE_SECRET_KEY": "k3y-" + "x7Gq2LmZ9vR4tW8pN1sB6cD0fH5jK3" * 2},
            "MARKETPLACE_SECRET_KEY: repeats a pattern",
        ),
        (
            {"MARKETPLACE_SECRET_KEY": "abababababcdcdcdcdcdefefefefefghghghghghijijijijijklkl"},
            "MARKETPLACE_SECRET_KEY: too little randomness",
        ),
        (
            # The development key with a few characters changed.
            {"MARKETPLACE_SECRET_KEY": DEV_KEY.replace("dev-only", "prod").upper()},
            "MARKETPLACE_SECRET_KEY: is the public development value or a variation of it",
        ),
        (
            {"MARKETPLACE_SECRET_KEY": "CHANGEME-" + PRODUCTION["MARKETPLACE_SECRET_KEY"]},
            "MARKETPLACE_SECRET_KEY: looks like a placeholder",
        ),
        (
            {"MARKETPLACE_STRIPE_WEBHOOK_SECRET": " "},
            "MARKETPLACE_STRIPE_WEBHOOK_SECRET: secret 1: must start with whsec_",
        ),
        (
            {"MARKETPLACE_STRIPE_WEBHOOK_SECRET": "whsec_0_onTURDhrF0xFkL_LyDLLBZzVzEUM3D "},
            "MARKETPLACE_STRIPE_WEBHOOK_SECRET: secret 1: contains whitespace",
        ),
        (
            {"MARKETPLACE_STRIPE_WEBHOOK_SECRET": "whsec_0_onTURDhrF0xFkL_LyDLLBZzVzEUM3D,whsec_x"},
            "MARKETPLACE_STRIPE_WEBHOOK_SECRET: secret 2: too short",
        ),
        (
            {"MARKETPLACE_STRIPE_SECRET_KEY": "sk_test_o5STJFWoafN-0JdoBa1q1y0D1ly8pvZkZaBgFyyB4Y"},
            "MARKETPLACE_STRIPE_SECRET_KEY: must be a Stripe key starting with sk_live_ or rk_",
        ),
        (
            # Staging takes any Stripe key, test mode included, but not a short one.
            {"MARKETPLACE_SERVICE_ENV": "staging", "MARKETPLACE_STRIPE_SECRET_KEY": "sk_abc"},
            "MARKETPLACE_STRIPE_SECRET_KEY: too short",
        ),
        (
            {"MARKETPLACE_STRIPE_SECRET_KEY": "sk_live_placeholder"},
            "MARKETPLACE_STRIPE_SECRET_KEY: too short",
        ),
        (
            {"MARKETPLACE_FINANCE_TOKEN": "finance-token"},
            "MARKETPLACE_FINANCE_TOKEN: too short",
        ),
        (
            {"MARKETPLACE_KEYSTORE_MASTER_KEY": "A" * 43 + "="},
            "MARKETPLACE_KEYSTORE_MASTER_KEY: is not random",
        ),
        (
            # "0123456789abcdef" twice: typed, not random.
            {"MARKETPLACE_KEYSTORE_MASTER_KEY": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="},
            "MARKETPLACE_KEYSTORE_MASTER_KEY: is not random",
        ),
        (
            {"MARKETPLACE_KEYSTORE_MASTER_KEY": "VGhpcyBpcyBteSB2ZXJ5IG93biBtYXN0ZXIga2V5ISE="},
            "MARKETPLACE_KEYSTORE_MASTER_KEY: is text, not random bytes",
        ),
        (
            {"MARKETPLACE_STRIPE_API_BASE": "http://stripe.internal"},
            "MARKETPLACE_STRIPE_API_BASE: must be an https:// URL",
        ),
        (
            {"MARKETPLACE_S3_ENDPOINT_URL": "http://minio.internal:9000"},
            "MARKETPLACE_S3_ENDPOINT_URL: must be an https:// URL",
        ),
        (
            {
                "MARKETPLACE_S3_ENDPOINT_URL": "https://s3.internal",
                "MARKETPLACE_AUDIT_S3_ENDPOINT_URL": "http://audit-s3.internal",
            },
            "MARKETPLACE_AUDIT_S3_ENDPOINT_URL: must be an https:// URL",
        ),
        (
            {"MARKETPLACE_KMS_ENDPOINT_URL": "http://kms.internal"},
            "MARKETPLACE_KMS_ENDPOINT_URL: must be an https:// URL",
        ),
        (
            {"MARKETPLACE_ALLOWED_PAYMENT_ORIGINS": "http://checkout.stripe.com"},
            "MARKETPLACE_ALLOWED_PAYMENT_ORIGINS: 'http://checkout.stripe.com' must be an https://",
        ),
        (
            {"MARKETPLACE_CSRF_TRUSTED_ORIGINS": "https://admin.example,http://admin.example"},
            "MARKETPLACE_CSRF_TRUSTED_ORIGINS: 'http://admin.example' must be an https:// origin",
        ),
        (
            {"MARKETPLACE_DATABASE_URL": "sqlite:////tmp/db.sqlite3"},
            "MARKETPLACE_DATABASE_URL: must be a PostgreSQL URL",
        ),
        (
            {"MARKETPLACE_KERNEL_URL": "http://kernel.internal"},
            "MARKETPLACE_KERNEL_URL: must be an https:// URL",
        ),
        (
            {"MARKETPLACE_FINANCE_URL": "http://finance.internal"},
            "MARKETPLACE_FINANCE_URL: must be an https:// URL",
        ),
        (
            {"MARKETPLACE_CHECKOUT_SUCCESS_URL": "http://shop.example/thanks"},
            "MARKETPLACE_CHECKOUT_SUCCESS_URL: must be an https:// URL",
        ),
        (
            {"MARKETPLACE_BROKER_URL": "filesystem://"},
            "MARKETPLACE_BROKER_URL: not set (the server-less broker is refused)",
        ),
        (
            {"MARKETPLACE_DELIVERY_RETENTION_DAYS": "0"},
            "MARKETPLACE_DELIVERY_RETENTION_DAYS: must be at least 1 day (0 turns the packages'",
        ),
        ({"MARKETPLACE_HSTS_SECONDS": "0"}, "MARKETPLACE_HSTS_SECONDS: must be at least 31536000"),
        (
            {"MARKETPLACE_HSTS_SECONDS": "86400"},
            "MARKETPLACE_HSTS_SECONDS: must be at least 31536000",
        ),
        (
            {"MARKETPLACE_STRIPE_WEBHOOK_TOLERANCE_SECONDS": "86400"},
            "MARKETPLACE_STRIPE_WEBHOOK_TOLERANCE_SECONDS: must be 1 to 3600 seconds",
        ),
        (
            {"MARKETPLACE_AUDIT_RETENTION_DAYS": "0"},
            "MARKETPLACE_AUDIT_RETENTION_DAYS: must be at least 1 day",
        ),
    ],
)
def test_production_refuses_insecure_values(override, message):
    result = manage("check", **{**PRODUCTION, **override})

    assert result.returncode != 0
    assert message in result.stderr
    assert result.stderr.count("\n  - ") == 1  # only the bad value is reported


@pytest.mark.parametrize(
    "override",
    [
        {"MARKETPLACE_METRICS_TOKEN": ""},
        {"MARKETPLACE_METRICS_TOKEN": "", "MARKETPLACE_METRICS_ADDR": "10.0.0.5"},
    ],
)
def test_production_refuses_metrics_open_to_anyone(override):
    result = manage("check", **{**PRODUCTION, **override})

    assert result.returncode != 0
    assert "MARKETPLACE_METRICS_TOKEN: not set (/metrics would be open to anyone)" in result.stderr
    assert result.stderr.count("\n  - ") == 1


@pytest.mark.parametrize("token", ["metrics", "changeme-changeme-changeme-changeme", "a" * 40])
def test_production_refuses_a_weak_metrics_token(token):
    result = manage("check", **{**PRODUCTION, "MARKETPLACE_METRICS_TOKEN": token})

    assert result.returncode != 0
    assert "MARKETPLACE_METRICS_TOKEN: " in result.stderr
    assert result.stderr.count("\n  - ") == 1


def test_production_takes_metrics_on_a_port_of_their_own_without_a_token():
    result = manage(
        "check",
        **{**PRODUCTION, "MARKETPLACE_METRICS_TOKEN": "", "MARKETPLACE_METRICS_PORT": "9100"},
    )

    assert result.returncode == 0, result.stderr


def test_production_like_settings_pass_check_deploy():
    result = manage("check", "--deploy", "--fail-level", "WARNING", **PRODUCTION)

    assert result.returncode == 0, result.stderr
    assert "System check identified no issues" in result.stdout


def test_an_unknown_service_env_is_refused():
    result = manage("check", MARKETPLACE_SERVICE_ENV="production")
    assert result.returncode != 0
    assert "MARKETPLACE_SERVICE_ENV must be dev, staging or prod" in result.stderr


def test_production_asked_for_in_a_env_file_is_refused_like_the_environment(tmp_path):
    # The settings module is chosen from the same source the settings read: a .env file that
    # asks for prod without its secrets gets the production refusal, not the dev settings.
    env_file = tmp_path / ".env"
    env_file.write_text("MARKETPLACE_SERVICE_ENV=prod\nMARKETPLACE_DEBUG=0\n")

    result = manage("check", MARKETPLACE_READ_ENV_FILE="1", MARKETPLACE_ENV_FILE=str(env_file))

    assert result.returncode != 0
    assert "Refusing to start with MARKETPLACE_SERVICE_ENV=prod" in result.stderr
    assert "MARKETPLACE_SECRET_KEY: not set" in result.stderr
    assert "MARKETPLACE_DATABASE_URL: not set" in result.stderr


def test_the_celery_app_reads_its_settings_from_the_env_file_too(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text(
        "MARKETPLACE_AUDIT_CHECKPOINT_SECONDS=7\nMARKETPLACE_CELERY_QUEUE=from-the-file\n"
    )
    script = (
        "from config.celery import app; app.loader.import_default_modules(); "
        "print(app.conf.beat_schedule['audit-checkpoint']['schedule'], "
        "app.conf.task_default_queue)"
    )

    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=BASE_DIR,
        env={
            **{
                k: v for k, v in os.environ.items() if not k.startswith(("MARKETPLACE_", "DJANGO_"))
            },
            "MARKETPLACE_READ_ENV_FILE": "1",
            "MARKETPLACE_ENV_FILE": str(env_file),
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["7.0", "from-the-file"]


def test_the_environment_wins_over_the_env_file(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("MARKETPLACE_SERVICE_ENV=prod\n")

    result = manage(
        "check",
        MARKETPLACE_READ_ENV_FILE="1",
        MARKETPLACE_ENV_FILE=str(env_file),
        MARKETPLACE_SERVICE_ENV="dev",
    )

    assert result.returncode == 0, result.stderr


def test_a_missing_env_file_that_was_asked_for_is_refused(tmp_path):
    result = manage(
        "check", MARKETPLACE_READ_ENV_FILE="1", MARKETPLACE_ENV_FILE=str(tmp_path / "none")
    )

    assert result.returncode != 0
    assert "MARKETPLACE_READ_ENV_FILE is set but" in result.stderr


def test_the_dev_settings_named_directly_still_get_the_production_refusal():
    # Importing any settings module runs config.settings first, which chooses by the service
    # environment: naming the dev settings is no way around production's checks.
    result = manage(
        "check", MARKETPLACE_SERVICE_ENV="prod", DJANGO_SETTINGS_MODULE="config.settings.local"
    )

    assert result.returncode != 0
    assert "Refusing to start with MARKETPLACE_SERVICE_ENV=prod" in result.stderr


@pytest.mark.parametrize(
    ("variable", "make", "min_length"),
    [
        ("MARKETPLACE_SECRET_KEY", "django", 50),
        ("MARKETPLACE_SECRET_KEY", "urlsafe48", 50),
        ("MARKETPLACE_FINANCE_TOKEN", "hex16", 32),
        ("MARKETPLACE_FINANCE_TOKEN", "urlsafe32", 32),
    ],
)
def test_secrets_made_by_the_usual_generators_are_accepted(variable, make, min_length):
    """Whatever an operator generates the usual way passes, at the shortest length allowed:
    the check refuses typed and patterned values, not random ones."""
    makers = {
        "django": get_random_secret_key,
        "urlsafe48": lambda: secrets.token_urlsafe(48),
        "hex16": lambda: secrets.token_hex(16),
        "urlsafe32": lambda: secrets.token_urlsafe(32),
    }
    min_bits = 200 if variable == "MARKETPLACE_SECRET_KEY" else 128
    for _ in range(300):
        value = makers[make]()
        assert len(value) >= min_length
        assert secret_weakness(value, min_length=min_length, min_bits=min_bits) is None, value
