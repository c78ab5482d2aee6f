"""The Celery app: `celery -A config worker` and `celery -A config beat`.

Its configuration, the beat schedule included, is the Django settings' `CELERY_*` values, so it
is read from the same source as every other setting (config.env).
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("marketplace")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
