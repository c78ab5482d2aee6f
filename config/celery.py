"""The Celery app: `celery -A config worker` and `celery -A config beat`.

Its configuration, the beat schedule included, is the Django settings' `CELERY_*` values, so it
is read from the same source as every other setting (config.env).
"""

import os
from typing import Any

from celery import Celery
from celery.signals import task_postrun, task_prerun

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("marketplace")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@task_prerun.connect
@task_postrun.connect
def _database_connections_as_for_a_request(task: Any = None, **kwargs: Any) -> None:
    """With CELERY_DB_REUSE_MAX, connections outlive a task: a broken or old one is closed here
    (CONN_MAX_AGE, CONN_HEALTH_CHECKS) as Django does around each request. Not for a task run
    in the caller's process (`apply()`), whose connection and transaction are the caller's."""
    from django.db import close_old_connections

    if task is not None and getattr(task.request, "is_eager", False):
        return
    close_old_connections()
