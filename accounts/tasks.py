"""Accounts' beat work: approval requests past their expiry are marked expired."""

from celery import shared_task

from accounts.approval_services import approvals_expire as _approvals_expire


@shared_task(acks_late=True, soft_time_limit=50, time_limit=60)
def approvals_expire() -> int:
    """Safe to run twice: each request is re-read under its lock and expired once."""
    return _approvals_expire()
