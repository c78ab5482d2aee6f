"""Previews' work on the workers: start a sandbox, end it at expiry, tear it down, sweep.

Each task loads by id and calls a service that guards on the session's state, so a task run
twice (a redelivery after a killed worker) changes nothing the first run did.
"""

from celery import shared_task

from previews import services
from previews.provisioners import ProvisionFailed

# A start waits for its sandbox at most MARKETPLACE_PREVIEW_START_TIMEOUT_SECONDS (10 s).
START_SOFT_LIMIT = 60


@shared_task(acks_late=True, soft_time_limit=START_SOFT_LIMIT, time_limit=START_SOFT_LIMIT + 30)
def preview_start(session_id: str) -> str:
    return services.preview_start(session_id=session_id)


@shared_task(acks_late=True, soft_time_limit=60, time_limit=90)
def preview_expire(session_id: str) -> str:
    return services.preview_expire(session_id=session_id)


@shared_task(
    acks_late=True,
    soft_time_limit=60,
    time_limit=90,
    max_retries=5,
    autoretry_for=(OSError, ProvisionFailed),
    retry_backoff=5,
    retry_backoff_max=120,
)
def preview_teardown(session_id: str) -> str:
    # What five retries do not cure, the sweep tries again every minute.
    return services.preview_teardown(session_id=session_id)


@shared_task(acks_late=True, soft_time_limit=50, time_limit=55)
def previews_sweep() -> dict:
    return services.previews_sweep().as_dict()


@shared_task(acks_late=True, soft_time_limit=900, time_limit=960)
def previews_gc() -> dict:
    return services.previews_gc().as_dict()
