"""Where orders hand over to licensing and delivery, without importing them (apps depend
downward: licensing uses orders, not the other way round).

Licensing registers Celery tasks under these names; orders sends them by name once the change
that calls for them has committed. Until a task of that name exists, nothing is sent.
"""

from celery import current_app

# A paid order became deliverable (paid, Finance acknowledged, no hold).
ORDER_RELEASED_TASK = "licensing.tasks.order_fulfil"
# A refund or a dispute: licenses of the order must stop verifying.
ORDER_REVOKED_TASK = "licensing.tasks.order_revoke"


def _send(task_name: str, order_id: str, reason: str) -> bool:
    if task_name not in current_app.tasks:
        return False
    current_app.send_task(task_name, args=[order_id], kwargs={"reason": reason})
    return True


def order_released(order_id: str) -> bool:
    return _send(ORDER_RELEASED_TASK, order_id, "released")


def order_revoked(order_id: str, reason: str) -> bool:
    return _send(ORDER_REVOKED_TASK, order_id, reason)
