"""Runs the Procfile's processes (web, worker, beat) until Ctrl-C, with honcho's manager and
output, but stops them so that each shuts down cleanly and quietly.

`honcho start` sends SIGTERM to each process's whole process group and SIGKILL 5 s later. The
group of the Celery worker holds its pool processes too: they died of the SIGTERM at once
(Celery logs each as an error) while the main process was still finishing its tasks, and it
then waited on until the SIGKILL. Here SIGTERM goes to each process alone, so gunicorn's master
and Celery's main process stop their own children in order, and the SIGKILL (still to the
whole group) comes only after STOP_SECONDS: a Celery worker on the file-system broker takes
about 7 s to finish a warm shutdown.

Each Procfile line `exec`s its program, so that the process started is the program itself,
not a shell that would die of the SIGTERM and leave the program running.

Written against honcho 2.0.0 (requirements.txt): it replaces the manager's process signaller
and its KILL_WAIT. tests/marketplace/test_scripts.py checks the result.
"""

import contextlib
import os
import signal
import sys
from pathlib import Path

import honcho.manager
from honcho.compat import ProcessManager
from honcho.environ import parse_procfile
from honcho.printer import Printer

STOP_SECONDS = 20


class _SignalTheProcessOnly(ProcessManager):
    def terminate(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):  # it stopped already
            os.kill(pid, signal.SIGTERM)


def main() -> None:
    procfile = parse_procfile(Path("Procfile").read_text(encoding="utf-8"))
    honcho.manager.KILL_WAIT = STOP_SECONDS
    manager = honcho.manager.Manager(Printer(sys.stdout))
    manager._procmgr = _SignalTheProcessOnly()
    for name, command in procfile.processes.items():
        manager.add_process(name, command)
    manager.loop()
    sys.exit(manager.returncode)


if __name__ == "__main__":
    main()
