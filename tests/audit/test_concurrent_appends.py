import itertools
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from typing import Any

import pytest

from audit.models import AuditEvent, ChainHead
from audit.sealer import seal_all
from audit.verify import chain_verify
from tests.support.pg import in_thread
from tests.support.worker import BASE_DIR, _database_url

WRITERS = 8
EVENTS_EACH = 40


@pytest.mark.django_db(transaction=True)
def test_eight_processes_appending_at_once_keep_one_gapless_chain(settings: Any) -> None:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "MARKETPLACE_DATABASE_URL": _database_url(),
        "MARKETPLACE_TEST_DATA_DIR": str(settings.DATA_DIR),
    }
    start_at = time.time() + 3  # every process has loaded Django by then
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.audit.appender",
                f"w{n}",
                str(EVENTS_EACH),
                str(start_at),
            ],
            cwd=BASE_DIR,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(WRITERS)
    ]
    for process in processes:
        _, errors = process.communicate(timeout=120)
        assert process.returncode == 0, errors
    seal_all()  # on PostgreSQL the writers left their events to the sealer

    total = WRITERS * EVENTS_EACH
    sequences = list(AuditEvent.objects.order_by("sequence").values_list("sequence", flat=True))
    assert sequences == list(range(1, total + 1))
    writers = Counter(AuditEvent.objects.values_list("actor_id", flat=True))
    assert writers == {f"w{n}": EVENTS_EACH for n in range(WRITERS)}
    # Each writer's own events keep their order within the chain.
    for n in range(WRITERS):
        indexes = [
            event.data["index"]
            for event in AuditEvent.objects.filter(actor_id=f"w{n}").order_by("sequence")
        ]
        assert indexes == list(range(EVENTS_EACH))
    # The writers really did interleave, or the test would prove nothing about the lock.
    order = list(AuditEvent.objects.order_by("sequence").values_list("actor_id", flat=True))
    switches = sum(1 for a, b in itertools.pairwise(order) if a != b)
    assert switches >= WRITERS
    assert ChainHead.objects.get().sequence == total
    report = chain_verify()
    assert report.ok, report.summary()


@pytest.mark.django_db(transaction=True)
def test_the_chain_verifies_while_other_processes_append(settings: Any) -> None:
    """An operator checks a live log: appends that commit while it is read are no tampering."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "MARKETPLACE_DATABASE_URL": _database_url(),
        "MARKETPLACE_TEST_DATA_DIR": str(settings.DATA_DIR),
    }
    start_at = time.time() + 3
    writers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.audit.appender", f"live{n}", "150", str(start_at)],
            cwd=BASE_DIR,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(2)
    ]
    # On PostgreSQL the log grows as it is sealed: a sealer runs beside the checks, as the
    # platform's does (on SQLite the appends seal themselves and this does nothing).
    appending = threading.Event()
    appending.set()

    def seal_while_appending() -> int:
        sealed = 0
        while appending.is_set():
            sealed += seal_all()
            time.sleep(0.01)
        return sealed + seal_all()

    sealer, sealed = in_thread(seal_while_appending)
    reports = []
    try:
        while time.time() < start_at:
            time.sleep(0.05)
        while any(writer.poll() is None for writer in writers):
            reports.append(chain_verify())
    finally:
        for writer in writers:
            _, errors = writer.communicate(timeout=120)
            assert writer.returncode == 0, errors
        appending.clear()
        sealer.join()
    assert not any(isinstance(outcome, Exception) for outcome in sealed), sealed

    seen = {report.last_sequence for report in reports}
    assert len(seen) > 3, "the checks did not overlap the appends"
    assert [report.summary() for report in reports if not report.ok] == []
    assert chain_verify().last_sequence == 300
