"""A gunicorn config whose workers answer `Prefer: wait` by polling every 5 ms, instead of
previews.services.preview_wait's backoff from 5 ms to 50 ms: what a wake-up on ready would
give, at the cost of more queries.

Run with `python -m bench.previews.run --gunicorn-config` and this file's path.

The platform's own function is left as it is; only the view's reference to it is replaced, in
this gunicorn's workers.
"""

import time
from typing import Any


def post_worker_init(worker: Any) -> None:
    from django.conf import settings

    from previews.api import views
    from previews.models import SessionStatus

    def preview_wait(*, session: Any, seconds: float) -> Any:
        deadline = time.monotonic() + min(seconds, settings.PREVIEW_READY_WAIT_SECONDS)
        while session.status in (SessionStatus.REQUESTED, SessionStatus.STARTING):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(0.005, left))
            session.refresh_from_db(
                fields=["status", "ready_at", "end_reason", "end_detail", "ended_at", "endpoint"]
            )
        return session

    views.preview_wait = preview_wait
    worker.log.warning("bench variant: Prefer: wait polls every 5 ms")
