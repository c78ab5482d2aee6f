"""The peer of bench/catalog: a django-oscar shop serving django-oscar-api's product list, as
a project that picks them would set it up. It runs in bench/catalog/.venv (never the
platform's), from bench/catalog/run.py, on a database of its own.

What is configured, and why (bench/README.md, "bench/catalog"):
- oscar's apps as its docs list them (oscar.INSTALLED_APPS) plus rest_framework and oscarapi;
- a short middleware stack (Django's own): less than the platform runs, in oscar's favour;
- the product list's fields (OSCARAPI_PRODUCT_FIELDS): oscar-api's defaults plus the plain
  columns our list also shows (description, the two times); not `categories` (one query per
  product for its full name) nor the price and availability links, so oscar's rows carry less
  than ours;
- DRF's cursor pagination, newest first, `page_size` up to 100: no COUNT(*) per page, as ours.
"""

import os

import oscar
from oscar.defaults import *  # noqa: F403

SECRET_KEY = "bench-only-not-secret"  # noqa: S105
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "bench.catalog.oscar.urls"
WSGI_APPLICATION = "bench.catalog.oscar.wsgi.application"
SITE_ID = 1
USE_TZ = True
TIME_ZONE = "UTC"

INSTALLED_APPS = [*oscar.INSTALLED_APPS, "rest_framework", "oscarapi"]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ["BENCH_OSCAR_DATABASE"],
        "USER": os.environ.get("BENCH_OSCAR_USER", "postgres"),
        "HOST": os.environ.get("BENCH_OSCAR_HOST", "127.0.0.1"),
        "PORT": os.environ.get("BENCH_OSCAR_PORT", "5432"),
        "CONN_MAX_AGE": 60,  # persistent connections, as the platform's
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
HAYSTACK_CONNECTIONS = {"default": {"ENGINE": "haystack.backends.simple_backend.SimpleEngine"}}
STATIC_URL = "/static/"
LOGGING = {"version": 1, "root": {"level": "WARNING"}}

OSCARAPI_PRODUCT_FIELDS = (
    "url",
    "id",
    "upc",
    "title",
    "description",
    "date_created",
    "date_updated",
)
REST_FRAMEWORK = {
    "DEFAULT_PAGINATION_CLASS": "bench.catalog.oscar.pagination.NewestFirst",
    "PAGE_SIZE": 20,
}
