"""The bench's settings with CELERY_DB_REUSE_MAX set.

Without it, Celery's Django fixup (celery.fixups.django.DjangoWorkerFixup.close_database)
closes every database connection before and after each task, whatever CONN_MAX_AGE says, so
each preview_start opens a new PostgreSQL connection. With it, a pool process keeps its
connection (CONN_MAX_AGE and CONN_HEALTH_CHECKS still apply).

    .venv/bin/python -m bench.previews.run --settings bench.previews.variants.settings_db_reuse
"""

from bench.previews.settings import *  # noqa: F403

CELERY_DB_REUSE_MAX = 1000
