"""The platform's Celery app (config.celery) with a probe for the previews benchmark:

    celery -A bench.previews.probe worker ...      # bench/previews/run.py starts it so

Each task's receipt by the worker's main process, and the start and end of its run in a pool
process, are appended to the file BENCH_PREVIEWS_PROBE names, one JSON line each: [event, epoch
seconds, task name, task id, first argument, CPU seconds the process has used so far]. The
handlers cost microseconds and change nothing else: the worker is the Procfile's, on the same
app and settings.
"""

import json
import os
import time
from typing import Any

from celery.signals import task_postrun, task_prerun, task_received

from config.celery import app

__all__ = ["app"]

_PROBE = os.environ.get("BENCH_PREVIEWS_PROBE", "")


def _note(event: str, name: str, task_id: str, args: Any) -> None:
    if not _PROBE:
        return
    first = args[0] if isinstance(args, list | tuple) and args else None
    note = [event, time.time(), name, task_id, first, time.process_time()]
    line = json.dumps(note, default=str) + "\n"
    # One write of one short line to a file opened for appending: lines of the main and the
    # pool processes do not interleave.
    with open(_PROBE, "a") as out:
        out.write(line)


@task_received.connect
def _received(request: Any = None, **_: Any) -> None:
    _note("received", request.name, request.id, request.args)


@task_prerun.connect
def _prerun(task_id: str = "", task: Any = None, args: Any = None, **_: Any) -> None:
    _note("prerun", task.name, task_id, args)


@task_postrun.connect
def _postrun(task_id: str = "", task: Any = None, args: Any = None, **_: Any) -> None:
    _note("postrun", task.name, task_id, args)
