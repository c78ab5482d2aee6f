"""The fan-out of the audit chain to the Kernel (audit/fanout.py), against the stand-in Kernel: a
real HTTPS server that requires our client certificate and keeps its own copy of the chain
(tests/support/kernel.py). Nothing of ours is replaced."""

import io
import json
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from django.core.cache import cache, caches
from django.core.cache.backends.locmem import LocMemCache
from django.core.management import CommandError, call_command
from django.db import connection, transaction
from django.utils import timezone
from prometheus_client import REGISTRY

from audit import fanout, sealer
from audit.chain import export_line, format_time, record_of
from audit.fanout import KernelPushFailed, kernel_cursor_state, kernel_push
from audit.models import AuditEvent, KernelCursor
from audit.sealer import seal_all, seals_later
from audit.services import audit_append
from config.celery import app as celery_app
from marketplace.actors import Actor
from marketplace.kernel import AuditAck, LocalKernel
from tests.support.kernel import AUDIT_PATH, KernelServer, json_reply, not_json, server_error
from tests.support.net import free_port
from tests.support.worker import WorkerProcess, wait_until

CLIENT_SUBJECT = "CN=marketplace-test-client,O=Marketplace Tests"


def append(count: int, *, first_index: int = 0) -> list[AuditEvent]:
    """`count` events, each in a transaction of its own."""
    events = []
    for index in range(first_index, first_index + count):
        with transaction.atomic():
            events.append(
                audit_append(
                    actor=Actor.service("tests"),
                    action="test.appended",
                    subject=("thing", index),
                    data={"index": index},
                )
            )
    return events


def line_object(event: AuditEvent) -> dict[str, Any]:
    """What the export holds for the event: the object the Kernel must receive."""
    stored = AuditEvent.objects.get(pk=event.pk)  # sealed since it was appended
    record = record_of(
        sequence=stored.sequence,
        occurred_at=stored.occurred_at,
        actor_type=stored.actor_type,
        actor_id=stored.actor_id,
        action=stored.action,
        subject_type=stored.subject_type,
        subject_id=stored.subject_id,
        data=stored.data,
        prev_hash=stored.prev_hash,
    )
    return json.loads(export_line(record, stored.hash))


def sent_sequences(kernel: KernelServer) -> list[list[int]]:
    return [
        [event["record"]["sequence"] for event in request.body["events"]]
        for request in kernel.audit_requests()
    ]


def held_sequences(kernel: KernelServer) -> list[int]:
    return [event["record"]["sequence"] for event in kernel.audit_events]


def cursor() -> KernelCursor:
    return KernelCursor.objects.get(id=1)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def queued_tasks() -> int:
    """Messages waiting in this test process's Celery queue (no worker consumes it here)."""
    with celery_app.connection_for_write() as conn, conn.channel() as channel:
        return channel.queue_declare(queue=celery_app.conf.task_default_queue).message_count


def purge_queue() -> None:
    with celery_app.connection_for_write() as conn, conn.channel() as channel:
        channel.queue_declare(queue=celery_app.conf.task_default_queue)
        channel.queue_purge(celery_app.conf.task_default_queue)


def pushes_only_in_the_queue() -> None:
    """On PostgreSQL a commit wakes the sealer (a task in the same queue) and the sealer wakes
    the push: with a seal marked due already, commits enqueue no seal task, the test seals
    with seal_all(), and the queue holds pushes only."""
    if seals_later():
        cache.set(sealer.SCHEDULED_KEY, 1, timeout=60)


# --- Pushing -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_events_reach_the_kernel_in_order_as_their_export_lines(kernel: KernelServer) -> None:
    events = append(3)

    push = kernel_push()

    assert (push.acknowledged, push.acknowledged_sequence, push.follow_up) == (3, 3, None)
    [request] = kernel.requests
    assert (request.method, request.path, request.content_type) == (
        "POST",
        AUDIT_PATH,
        "application/json",
    )
    assert request.client_subject == CLIENT_SUBJECT
    assert request.body == {"events": [line_object(event) for event in events]}
    assert kernel.audit_events == [line_object(event) for event in events]
    state = cursor()
    assert (state.acknowledged_sequence, state.attempts, state.last_error) == (3, 0, "")
    assert state.acknowledged_at is not None


@pytest.mark.django_db
def test_a_backlog_goes_in_batches_in_sequence_order(
    kernel: KernelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fanout, "BATCH_SIZE", 2)
    append(5)

    push = kernel_push()

    assert push.acknowledged == 5
    assert sent_sequences(kernel) == [[1, 2], [3, 4], [5]]
    assert held_sequences(kernel) == [1, 2, 3, 4, 5]


@pytest.mark.django_db
def test_a_push_stops_at_its_time_budget_and_asks_for_another(
    kernel: KernelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fanout, "BATCH_SIZE", 2)
    append(5)

    push = kernel_push(time_budget=0)

    assert (push.acknowledged_sequence, push.more, push.follow_up) == (2, True, 0.0)
    assert kernel_push().acknowledged_sequence == 5
    assert held_sequences(kernel) == [1, 2, 3, 4, 5]


@pytest.mark.django_db
def test_pushing_again_sends_nothing_new(kernel: KernelServer) -> None:
    append(3)
    kernel_push()

    again = kernel_push()

    assert (again.acknowledged, again.acknowledged_sequence) == (0, 3)
    assert sent_sequences(kernel) == [[1, 2, 3]]


@pytest.mark.django_db
def test_events_sent_twice_are_not_duplicated_at_the_kernel(kernel: KernelServer) -> None:
    # As when the Kernel's answer was lost after it stored the events: the cursor never moved.
    append(3)
    kernel_push()
    KernelCursor.objects.filter(id=1).update(acknowledged_sequence=1)
    append(1, first_index=3)

    push = kernel_push()

    assert (push.acknowledged, push.acknowledged_sequence) == (3, 4)
    assert sent_sequences(kernel) == [[1, 2, 3], [2, 3, 4]]
    assert held_sequences(kernel) == [1, 2, 3, 4]


@pytest.mark.django_db
def test_without_events_nothing_is_sent(kernel: KernelServer) -> None:
    push = kernel_push()

    assert (push.acknowledged, push.acknowledged_sequence) == (0, 0)
    assert kernel.requests == []
    assert cursor().acknowledged_sequence == 0


# --- Failures ----------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (server_error(500), "failed with HTTP 500"),
        (server_error(503), "failed with HTTP 503"),
        (not_json(502), "failed with HTTP 502"),
        (not_json(200), "without a usable acknowledged_through"),
        (json_reply(200, {"acknowledged_through": "3"}), "without a usable acknowledged_through"),
        (json_reply(307, {}), "answered HTTP 307 to an audit append"),
    ],
)
def test_a_kernel_failure_is_recorded_and_nothing_is_skipped(
    kernel: KernelServer, reply: Any, error: str
) -> None:
    append(3)
    kernel.script(reply)
    failures = sample("marketplace_audit_kernel_push_failures_total", reason="unavailable")

    with pytest.raises(KernelPushFailed) as raised:
        kernel_push()

    assert raised.value.attempts == 1
    assert raised.value.retry_in == 1.0
    state = cursor()
    assert (state.acknowledged_sequence, state.attempts) == (0, 1)
    assert error in state.last_error
    assert state.last_error.startswith(f"the Kernel at {kernel.url} ")
    assert state.last_attempt_at is not None
    assert state.acknowledged_at is None
    assert kernel.audit_events == []
    assert (
        sample("marketplace_audit_kernel_push_failures_total", reason="unavailable") == failures + 1
    )
    assert sample("marketplace_audit_kernel_backlog_events") == 3


@pytest.mark.django_db
def test_after_a_failure_pushes_wait_for_the_backoff_then_everything_arrives_in_order(
    kernel: KernelServer,
) -> None:
    append(2)
    kernel.script(server_error())
    with pytest.raises(KernelPushFailed):
        kernel_push()
    append(2, first_index=2)

    waiting = kernel_push()

    assert waiting.retry_in is not None
    assert 0 < waiting.retry_in <= 1.0
    assert waiting.follow_up == waiting.retry_in
    assert len(kernel.requests) == 1  # the failed one: nothing was sent during the backoff

    # The backoff is over.
    KernelCursor.objects.filter(id=1).update(last_attempt_at=timezone.now() - timedelta(minutes=5))
    push = kernel_push()

    assert push.acknowledged_sequence == 4
    assert sent_sequences(kernel) == [[1, 2], [1, 2, 3, 4]]
    assert held_sequences(kernel) == [1, 2, 3, 4]
    state = cursor()
    assert (state.attempts, state.last_error) == (0, "")


@pytest.mark.django_db
def test_a_kernel_that_is_down_is_retried_with_a_growing_backoff(
    kernel: KernelServer, settings: Any
) -> None:
    closed = f"https://127.0.0.1:{free_port()}"
    settings.KERNEL_URL = closed
    append(2)

    delays = []
    for _ in range(3):
        with pytest.raises(KernelPushFailed) as raised:
            kernel_push(force=True)
        delays.append(raised.value.retry_in)

    assert delays == [1.0, 2.0, 4.0]
    state = cursor()
    assert (state.acknowledged_sequence, state.attempts) == (0, 3)
    assert state.last_error.startswith(f"the Kernel at {closed} is unreachable: ")
    assert "Connection refused" in state.last_error

    settings.KERNEL_URL = kernel.url
    assert kernel_push(force=True).acknowledged_sequence == 2
    assert held_sequences(kernel) == [1, 2]


def test_the_backoff_doubles_up_to_a_minute() -> None:
    assert [fanout.KERNEL_BACKOFF.seconds(n) for n in (1, 2, 3, 6, 7, 20)] == [
        1.0,
        2.0,
        4.0,
        32.0,
        60.0,
        60.0,
    ]


@pytest.mark.django_db
def test_a_rejection_is_recorded_and_the_events_stay_first_in_line(kernel: KernelServer) -> None:
    append(2)
    kernel.script(json_reply(422, {"detail": "event 1's hash does not cover its record"}))
    failures = sample("marketplace_audit_kernel_push_failures_total", reason="rejected")

    with pytest.raises(KernelPushFailed):
        kernel_push()

    state = cursor()
    assert (state.acknowledged_sequence, state.attempts) == (0, 1)
    assert state.last_error == (
        f"the Kernel at {kernel.url} rejected audit events up to #2 with HTTP 422: "
        "event 1's hash does not cover its record"
    )
    assert sample("marketplace_audit_kernel_push_failures_total", reason="rejected") == (
        failures + 1
    )

    assert kernel_push(force=True).acknowledged_sequence == 2
    assert sent_sequences(kernel) == [[1, 2], [1, 2]]


@pytest.mark.django_db
def test_the_kernel_refuses_a_client_certificate_from_another_ca(
    kernel: KernelServer, settings: Any
) -> None:
    settings.KERNEL_CERT = str(kernel.pki.rogue_client.cert)
    settings.KERNEL_KEY = str(kernel.pki.rogue_client.key)
    append(1)

    with pytest.raises(KernelPushFailed):
        kernel_push()

    assert "certificate verify failed: unable to get local issuer certificate" in (
        kernel.wait_for_refusal()
    )
    assert kernel.requests == []
    assert kernel.audit_events == []
    state = cursor()
    assert (state.acknowledged_sequence, state.attempts) == (0, 1)
    assert state.last_error.startswith(f"the Kernel at {kernel.url} is unreachable: ")


# --- Acknowledgements that do not fit ----------------------------------------------------------


@pytest.mark.django_db
def test_a_kernel_that_lost_the_end_of_its_copy_gets_it_again(kernel: KernelServer) -> None:
    append(5)
    kernel_push()
    kernel.audit_truncate(2)  # restored from an old backup
    append(3, first_index=5)

    push = kernel_push()

    assert push.acknowledged_sequence == 8
    assert sent_sequences(kernel) == [[1, 2, 3, 4, 5], [6, 7, 8], [3, 4, 5, 6, 7, 8]]
    assert kernel.audit_events == [line_object(e) for e in AuditEvent.objects.order_by("sequence")]
    state = cursor()
    assert (state.acknowledged_sequence, state.attempts) == (8, 0)


@pytest.mark.django_db
def test_a_409_that_leaves_no_gap_is_out_of_step(kernel: KernelServer) -> None:
    append(2)
    kernel.script(json_reply(409, {"acknowledged_through": 0}))

    with pytest.raises(KernelPushFailed):
        kernel_push()

    state = cursor()
    assert (state.acknowledged_sequence, state.attempts) == (0, 1)
    assert state.last_error == (
        "the Kernel answered 409 to events #1-#2, yet says it holds events through #0, which "
        "leaves nothing missing before #1"
    )


@pytest.mark.django_db
def test_an_acknowledgement_past_what_was_sent_moves_the_cursor_only_to_what_was_sent(
    kernel: KernelServer,
) -> None:
    append(2)
    kernel.script(json_reply(200, {"acknowledged_through": 99}))

    assert kernel_push().acknowledged_sequence == 2
    assert cursor().acknowledged_sequence == 2


@pytest.mark.django_db
def test_an_acknowledgement_of_part_of_a_batch_sends_the_rest_again(kernel: KernelServer) -> None:
    append(3)
    kernel.audit_take_at_most(1)

    assert kernel_push().acknowledged_sequence == 3
    assert sent_sequences(kernel) == [[1, 2, 3], [2, 3], [3]]
    assert held_sequences(kernel) == [1, 2, 3]


@pytest.mark.django_db
def test_an_acknowledgement_of_nothing_sent_is_a_failure(kernel: KernelServer) -> None:
    append(2)
    kernel_push()
    append(1, first_index=2)
    kernel.script(json_reply(200, {"acknowledged_through": 2}))

    with pytest.raises(KernelPushFailed):
        kernel_push()

    state = cursor()
    assert (state.acknowledged_sequence, state.attempts) == (2, 1)
    assert state.last_error == (
        "the Kernel acknowledged only through #2 after being sent events #3-#3: it kept none "
        "of them"
    )


# --- Metrics -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_lag_of_each_acknowledged_event_is_observed(kernel: KernelServer) -> None:
    count = sample("marketplace_audit_kernel_lag_seconds_count")
    total = sample("marketplace_audit_kernel_lag_seconds_sum")
    within_3s = sample("marketplace_audit_kernel_lag_seconds_bucket", le="3.0")
    append(3)
    started = time.monotonic()

    kernel_push()

    assert sample("marketplace_audit_kernel_lag_seconds_count") == count + 3
    added = sample("marketplace_audit_kernel_lag_seconds_sum") - total
    assert 0 < added < 3 * (time.monotonic() - started + 5)
    assert sample("marketplace_audit_kernel_lag_seconds_bucket", le="3.0") == within_3s + 3
    assert sample("marketplace_audit_kernel_backlog_events") == 0


# --- Single flight -----------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_push_that_finds_the_cursor_held_sends_nothing_and_asks_to_run_again(
    kernel: KernelServer,
) -> None:
    if not connection.features.has_select_for_update_skip_locked:
        pytest.skip("SQLite holds no lock across the Kernel call (audit/fanout.py)")
    append(2)
    kernel_push()
    append(1, first_index=2)
    held, release = threading.Event(), threading.Event()

    def hold_the_cursor() -> None:
        try:
            with transaction.atomic():
                KernelCursor.objects.select_for_update().get(id=1)
                held.set()
                release.wait(10)
        finally:
            connection.close()

    holder = threading.Thread(target=hold_the_cursor)
    holder.start()
    try:
        assert held.wait(10)
        push = kernel_push()
    finally:
        release.set()
        holder.join()

    assert (push.busy, push.acknowledged, push.follow_up) == (True, 0, fanout.BUSY_DELAY_SECONDS)
    assert sent_sequences(kernel) == [[1, 2]]
    assert kernel_push().acknowledged_sequence == 3


# --- Waking a push -----------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_commits_close_together_enqueue_one_push(kernel: KernelServer) -> None:
    if isinstance(caches["default"], LocMemCache):
        pytest.skip("the wake-up is shared between processes only through a shared cache")
    purge_queue()
    pushes_only_in_the_queue()

    append(3)
    seal_all()

    assert queued_tasks() == 1
    assert cache.get(fanout.SCHEDULED_KEY) == 1
    fanout.kernel_push_wakeup_taken()  # what the task does first
    append(1, first_index=3)
    seal_all()
    assert queued_tasks() == 2


@pytest.mark.django_db(transaction=True)
def test_with_a_cache_of_its_own_each_commit_enqueues_a_push(kernel: KernelServer) -> None:
    # The worker would not see the key, so it could never clear it.
    if not isinstance(caches["default"], LocMemCache):
        pytest.skip("this process's cache is shared")
    purge_queue()

    append(3)

    assert queued_tasks() == 3
    assert cache.get(fanout.SCHEDULED_KEY) is None


@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_append_leaves_nothing_to_push(kernel: KernelServer) -> None:
    purge_queue()

    def change_that_fails() -> None:
        with transaction.atomic():
            append(1)
            raise RuntimeError("the change failed")

    with pytest.raises(RuntimeError):
        change_that_fails()

    assert AuditEvent.objects.count() == 0
    assert queued_tasks() == 0
    assert cache.get(fanout.SCHEDULED_KEY) is None
    assert kernel_push().acknowledged == 0
    assert kernel.requests == []


@pytest.mark.django_db(transaction=True)
def test_with_the_local_backend_nothing_is_sent_or_enqueued(
    kernel: KernelServer, settings: Any
) -> None:
    settings.KERNEL_URL = ""
    purge_queue()
    pushes_only_in_the_queue()

    append(2)
    seal_all()
    push = kernel_push()

    assert queued_tasks() == 0
    assert cache.get(fanout.SCHEDULED_KEY) is None
    assert (push.acknowledged, push.acknowledged_sequence) == (0, 0)
    assert kernel.requests == []
    assert not KernelCursor.objects.exists()


def test_the_local_backend_keeps_no_copy_and_acknowledges_everything() -> None:
    assert LocalKernel().audit_append(lines=[b"{}"], last_sequence=7) == AuditAck(7)


# --- The command -------------------------------------------------------------------------------


def run_command() -> str:
    out = io.StringIO()
    call_command("audit_push_kernel", stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_the_command_pushes_now_and_prints_the_cursor(kernel: KernelServer) -> None:
    append(2)
    kernel.script(server_error())
    with pytest.raises(KernelPushFailed):
        kernel_push()

    output = run_command()  # at once, though the backoff is not over

    assert output.startswith("Kernel acknowledged through #2 (at 20")
    assert output.endswith("; chain head #2; backlog 0 event(s).\n")
    assert held_sequences(kernel) == [1, 2]


@pytest.mark.django_db
def test_the_command_fails_with_the_kernels_error(kernel: KernelServer) -> None:
    append(2)
    kernel.script(server_error(503))
    out = io.StringIO()

    with pytest.raises(CommandError) as raised:
        call_command("audit_push_kernel", stdout=out)

    assert str(raised.value) == (
        f"The Kernel did not take the events: the Kernel at {kernel.url} failed with HTTP 503. "
        "The worker retries on its own; run this command again once the Kernel is back."
    )
    assert out.getvalue().splitlines() == [
        "Kernel acknowledged through #0 (at never); chain head #2; backlog 2 event(s).",
        f"Failed attempts since the last acknowledgement: 1, the last at "
        f"{format_time(cursor().last_attempt_at)}: the Kernel at {kernel.url} failed "
        "with HTTP 503",
    ]


@pytest.mark.django_db
def test_the_command_without_a_kernel_says_there_is_nothing_to_push(settings: Any) -> None:
    settings.KERNEL_URL = ""
    append(1)
    seal_all()  # without a Kernel, nothing but the sealer seals

    assert run_command().splitlines() == [
        "No Kernel is configured (MARKETPLACE_KERNEL_URL is empty): the local backend keeps no "
        "copy of the chain, so there is nothing to push.",
        "Kernel acknowledged through #0 (at never); chain head #1; backlog 1 event(s).",
    ]
    assert kernel_cursor_state().acknowledged_sequence == 0


# --- With a worker -----------------------------------------------------------------------------


@pytest.fixture
def kernel_worker(kernel: KernelServer, celery_worker: WorkerProcess) -> WorkerProcess:
    """A worker started after settings point at the stand-in Kernel, so it pushes there."""
    return celery_worker


@pytest.mark.worker
def test_a_worker_pushes_committed_events_to_the_kernel(
    kernel: KernelServer, kernel_worker: WorkerProcess
) -> None:
    for round_ in range(4):
        append(5, first_index=5 * round_)
        time.sleep(0.3)
    started = time.monotonic()

    wait_until(
        lambda: kernel_cursor_state().acknowledged_sequence == 20, timeout=10, worker=kernel_worker
    )

    assert time.monotonic() - started < 5
    assert kernel.audit_events == [line_object(e) for e in AuditEvent.objects.order_by("sequence")]
    assert "audit.tasks.kernel_push" in kernel_worker.log()


@pytest.mark.worker
def test_a_worker_retries_through_a_kernel_outage(
    kernel: KernelServer, kernel_worker: WorkerProcess
) -> None:
    kernel.script(server_error(503), server_error(503))

    append(3)

    wait_until(
        lambda: kernel_cursor_state().acknowledged_sequence == 3, timeout=15, worker=kernel_worker
    )
    assert held_sequences(kernel) == [1, 2, 3]
    assert [len(batch) for batch in sent_sequences(kernel)][-1] == 3
    state = cursor()
    assert (state.attempts, state.last_error) == (0, "")
    assert "retry: Retry in 1.0s: KernelPushFailed" in kernel_worker.log()
