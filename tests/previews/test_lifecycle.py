"""A sandbox session's life, requested → starting → ready → ended → torn down, on real
bubblewrap sandboxes: started by a real worker where the flow crosses the queue (and that worker
killed with SIGKILL), started in this process where a start's own outcome is the point."""

import io
import socket
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import connection
from django.utils import timezone

from previews import tasks
from previews.models import EndReason, PreviewFile, PreviewSession, SessionStatus
from previews.provisioners.local import LocalProvisioner
from previews.sandbox import available, processes_of, sandbox_id_of, sandboxes_running
from previews.services import (
    Upload,
    preview_open,
    preview_revoke,
    preview_start,
    preview_teardown,
    previews_sweep,
)
from tests.catalog.factories import TEST_ACTOR
from tests.previews.factories import SERVER_COMMAND, add_material, previewable_sku, sandbox_uploads
from tests.support.audit import sealed_events
from tests.support.worker import wait_until

REASON = available()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

# The demo server, started two seconds late: a start that is still under way when the test acts.
SLOW_SERVER = b"""import runpy, time
time.sleep(2)
runpy.run_path("server.py", run_name="__main__")
"""
SLOW_COMMAND = ["/usr/bin/python3", "-I", "-B", "slow.py"]
# The worker's start of the slow server takes about 2 s (and up to the start timeout).
STARTING = 10


def slow_sku() -> Any:
    sku = previewable_sku()
    add_material(
        sku, uploads=[*sandbox_uploads(), Upload("slow.py", io.BytesIO(SLOW_SERVER))],
        command=SLOW_COMMAND,
    )  # fmt: skip
    return sku


def session_of(session_id: Any) -> PreviewSession:
    return PreviewSession.objects.get(pk=session_id)


def status_of(session_id: Any) -> str:
    return PreviewSession.objects.values_list("status", flat=True).get(pk=session_id)


def nothing_runs(environment_id: str) -> bool:
    """No sandbox of the session is listed, and no process of it is left."""
    listed = {sandbox_id_of(pid) for pid in sandboxes_running()}
    return (
        environment_id not in listed
        and LocalProvisioner().alive(environment_id) is False
        and processes_of(environment_id) == []
    )


def socket_dir(session: PreviewSession) -> Path:
    return django_settings.PREVIEW_DIR / "sockets" / session.environment_id


def events(session: PreviewSession) -> list[tuple[str, dict[str, Any]]]:
    return [
        (event.action, event.data)
        for event in sealed_events(subject_type="preview", subject_id=str(session.pk))
    ]


def created_data(session: PreviewSession, ttl: int) -> dict[str, Any]:
    return {
        "sku": session.sku.slug,
        "kind": "sandbox",
        "material_version": session.material.version,
        "material_digest": session.material.digest,
        "provisioner": "local",
        "ttl_seconds": ttl,
        "expires_at": session.expires_at.isoformat(),
    }


def torn_down_data(reason: str, *, found: bool) -> dict[str, Any]:
    return {"reason": reason, "sandbox_found": found, "lag_ms": None}


def gone_reason(client: Any, token: str) -> tuple[int, str | None]:
    answer = client.get(f"/previews/{token}/")
    return answer.status_code, answer.json().get("reason") if answer.status_code == 410 else None


@pytest.fixture(autouse=True)
def _no_sandbox_outlives_its_test(request: pytest.FixtureRequest):
    """The database is emptied after each test, but a sandbox started in this process is not:
    tear down whatever a failing test left (before the database is emptied: the database
    fixture is set up first, so it is torn down after this)."""
    request.getfixturevalue("_django_db_helper")
    yield
    for environment_id in PreviewSession.objects.values_list("environment_id", flat=True):
        LocalProvisioner().teardown(environment_id)


# --- Through the worker ------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_session_starts_on_the_worker_and_the_buyer_ends_it(
    celery_worker, buyer_client, buyer, client
):
    sku = previewable_sku()

    answer = buyer_client.post(f"/api/v1/skus/{sku.slug}/previews")

    assert answer.status_code == 201, answer.content
    body = answer.json()
    assert body["status"] == SessionStatus.REQUESTED  # answered at once, before the worker
    wait_until(lambda: status_of(body["id"]) == SessionStatus.READY, worker=celery_worker)
    session = session_of(body["id"])
    assert session.created_at < session.started_at < session.ready_at
    assert session.host == socket.gethostname()
    assert session.endpoint == f"unix:{socket_dir(session)}/http.sock"
    assert LocalProvisioner().alive(session.environment_id) is True
    page = client.get(f"/previews/{body['token']}/")
    assert page.status_code == 200
    assert b"Hello from the preview" in b"".join(page.streaming_content)
    start_ms = round((session.ready_at - session.created_at).total_seconds() * 1000)
    assert events(session) == [
        ("preview.created", created_data(session, ttl=900)),
        ("preview.ready", {"host": socket.gethostname(), "start_ms": start_ms}),
    ]

    ended = buyer_client.delete(f"/api/v1/previews/{session.pk}")

    assert ended.status_code == 200
    assert (ended.json()["status"], ended.json()["reason"], ended.json()["detail"]) == (
        SessionStatus.ENDED,
        EndReason.ENDED,
        "The preview was ended.",
    )
    assert gone_reason(client, body["token"]) == (410, "ended")
    wait_until(lambda: status_of(session.pk) == SessionStatus.TORN_DOWN, worker=celery_worker)
    assert nothing_runs(session.environment_id)
    assert not socket_dir(session).exists()
    session.refresh_from_db()
    assert session.ended_at <= session.torn_down_at
    [*_, ended_event, torn_down] = sealed_events(subject_type="preview", subject_id=str(session.pk))
    assert (ended_event.action, ended_event.data) == (
        "preview.ended",
        {"reason": "ended", "detail": "ended by the buyer"},
    )
    assert (ended_event.actor_type, ended_event.actor_id) == ("buyer", str(buyer.uuid))
    assert (torn_down.action, torn_down.data) == (
        "preview.torn_down",
        torn_down_data("ended", found=True),
    )
    assert (torn_down.actor_type, torn_down.actor_id) == ("service", "previews")


@pytest.mark.django_db(transaction=True)
def test_a_session_ends_at_its_expiry_and_its_task_tears_it_down(
    celery_worker, buyer_client, client, settings
):
    settings.PREVIEW_MAX_TTL_SECONDS = 3
    sku = previewable_sku(preview_ttl_seconds=60)

    answer = buyer_client.post(f"/api/v1/skus/{sku.slug}/previews", HTTP_PREFER="wait=5")

    body = answer.json()
    assert body["status"] == SessionStatus.READY, celery_worker.log()[-3000:]
    session = session_of(body["id"])
    assert session.expires_at - session.created_at == timedelta(seconds=3)
    wait_until(
        lambda: status_of(session.pk) == SessionStatus.TORN_DOWN, timeout=15, worker=celery_worker
    )
    session.refresh_from_db()
    assert (session.end_reason, session.end_detail) == (EndReason.EXPIRED, "its time ran out")
    assert nothing_runs(session.environment_id)
    assert not socket_dir(session).exists()
    lag = session.torn_down_at - session.expires_at
    assert timedelta(0) <= lag < timedelta(seconds=5)
    assert gone_reason(client, body["token"]) == (410, "expired")
    [created, _, ended, torn_down] = events(session)
    assert created == ("preview.created", created_data(session, ttl=3))
    assert ended == ("preview.ended", {"reason": "expired", "detail": "its time ran out"})
    # The sandbox also stops itself at the expiry: whether the teardown still found it is a
    # race between the two.
    assert torn_down[0] == "preview.torn_down"
    assert torn_down[1] == {
        "reason": "expired",
        "sandbox_found": torn_down[1]["sandbox_found"],
        "lag_ms": round(lag.total_seconds() * 1000),
    }


@pytest.mark.django_db(transaction=True)
def test_a_session_revoked_while_it_starts_is_torn_down_and_never_ready(
    celery_worker, buyer, client
):
    opened = preview_open(buyer=buyer, sku_slug=slow_sku().slug)
    session = opened.session
    wait_until(
        lambda: (
            status_of(session.pk) == SessionStatus.STARTING
            and LocalProvisioner().alive(session.environment_id)
        ),
        worker=celery_worker,
    )

    preview_revoke(session_id=session.pk, reason="abuse reported", actor=TEST_ACTOR)

    assert gone_reason(client, opened.token) == (410, "revoked")
    wait_until(
        lambda: status_of(session.pk) == SessionStatus.TORN_DOWN,
        timeout=STARTING,
        worker=celery_worker,
    )
    session.refresh_from_db()
    assert (session.end_reason, session.end_detail) == (EndReason.REVOKED, "abuse reported")
    assert (session.ready_at, session.endpoint) == (None, "")
    assert nothing_runs(session.environment_id)
    assert not socket_dir(session).exists()
    # The start finished (the server answered) and found the session ended: it tore the
    # sandbox down itself, before the teardown task that the worker then ran for nothing.
    assert events(session)[1:] == [
        ("preview.ended", {"reason": "revoked", "detail": "abuse reported"}),
        ("preview.torn_down", torn_down_data("revoked", found=True)),
    ]


# --- A start's outcome, in this process ----------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("command", "start_timeout", "detail"),
    [
        (["/usr/bin/false"], 5, "the command exited with status 1"),
        (
            ["/usr/bin/sleep", "100"],
            2,
            "the command did not answer HTTP on its socket within 2 s",
        ),
    ],
    ids=["exits-at-once", "never-listens"],
)
def test_a_sandbox_that_does_not_start_fails_its_session_and_is_torn_down(
    buyer, settings, command, start_timeout, detail
):
    settings.PREVIEW_START_TIMEOUT_SECONDS = start_timeout
    sku = previewable_sku()
    add_material(sku, command=command)
    opened = preview_open(buyer=buyer, sku_slug=sku.slug)

    assert preview_start(session_id=opened.session.pk) == SessionStatus.TORN_DOWN

    session = session_of(opened.session.pk)
    assert (session.status, session.end_reason, session.end_detail) == (
        SessionStatus.TORN_DOWN,
        EndReason.FAILED,
        detail,
    )
    assert session.ready_at is None
    assert nothing_runs(session.environment_id)
    assert not socket_dir(session).exists()
    assert events(session)[1:] == [
        ("preview.failed", {"reason": "failed", "detail": detail}),
        ("preview.torn_down", torn_down_data("failed", found=False)),
    ]


@pytest.mark.django_db
def test_material_changed_in_storage_after_upload_fails_the_start(buyer, settings):
    sku = previewable_sku()
    # Its own bytes, so no copy of an equal digest is in the preview folder already.
    material = add_material(
        sku,
        uploads=[*sandbox_uploads(), Upload("id.txt", io.BytesIO(uuid.uuid4().bytes))],
        command=SERVER_COMMAND,
    )
    stored = PreviewFile.objects.get(material=material, path="server.py")
    original = default_storage.open(stored.storage_key).read()
    default_storage.delete(stored.storage_key)
    tampered = original.replace(b"Serve", b"SERVE")
    assert len(tampered) == len(original)
    assert tampered != original
    assert default_storage.save(stored.storage_key, ContentFile(tampered)) == stored.storage_key
    opened = preview_open(buyer=buyer, sku_slug=sku.slug)

    assert preview_start(session_id=opened.session.pk) == SessionStatus.TORN_DOWN

    session = session_of(opened.session.pk)
    detail = (
        "the stored file server.py does not match its recorded SHA-256; upload the material again"
    )
    assert (session.status, session.end_reason, session.end_detail) == (
        SessionStatus.TORN_DOWN,
        EndReason.FAILED,
        detail,
    )
    assert nothing_runs(session.environment_id)
    copies = settings.PREVIEW_DIR / "material"
    assert [entry.name for entry in copies.iterdir() if material.digest in entry.name] == []
    assert events(session)[1][0] == "preview.failed"


@pytest.mark.django_db(transaction=True)
def test_a_start_delivered_again_while_the_first_runs_fails_the_session(buyer):
    # Two deliveries of one start (a broker redelivering a message it thinks lost) overlap: the
    # second finds the session `starting` and fails it; the first, once its sandbox answers,
    # finds it ended and tears it down.
    session = preview_open(buyer=buyer, sku_slug=slow_sku().slug).session
    first: dict[str, str] = {}

    def deliver() -> None:
        try:
            first["status"] = preview_start(session_id=session.pk)
        finally:
            connection.close()

    delivery = threading.Thread(target=deliver)
    delivery.start()
    try:
        wait_until(
            lambda: (
                status_of(session.pk) == SessionStatus.STARTING
                and LocalProvisioner().alive(session.environment_id)
            ),
            timeout=STARTING,
        )

        again = preview_start(session_id=session.pk)
    finally:
        delivery.join(STARTING + 5)

    assert again == SessionStatus.ENDED
    assert first == {"status": SessionStatus.TORN_DOWN}
    session.refresh_from_db()
    detail = "the worker starting its sandbox stopped before it was ready"
    assert (session.status, session.end_reason, session.end_detail) == (
        SessionStatus.TORN_DOWN,
        EndReason.FAILED,
        detail,
    )
    assert session.ready_at is None
    assert nothing_runs(session.environment_id)
    assert events(session)[1:] == [
        ("preview.failed", {"reason": "failed", "detail": detail}),
        ("preview.torn_down", torn_down_data("failed", found=True)),
    ]


# --- A worker killed with SIGKILL --------------------------------------------------------------


def bwrap_parent(environment_id: str) -> int:
    [pid] = [pid for pid in sandboxes_running() if sandbox_id_of(pid) == environment_id]
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rpartition(")")[2].split()[1])


@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_with_a_ready_sandbox_takes_it_along_and_the_sweep_fails_the_session(
    start_worker, buyer, client
):
    worker = start_worker()
    opened = preview_open(buyer=buyer, sku_slug=previewable_sku().slug)
    session = opened.session
    wait_until(lambda: status_of(session.pk) == SessionStatus.READY, worker=worker)
    assert bwrap_parent(session.environment_id) == worker.pid

    worker.kill()

    assert worker.process.returncode == -9
    wait_until(lambda: nothing_runs(session.environment_id), timeout=5)
    assert status_of(session.pk) == SessionStatus.READY
    assert client.get(f"/previews/{opened.token}/").status_code == 503

    result = previews_sweep()

    assert (result.exited, result.stuck, result.expired) == (1, 0, 0)
    session.refresh_from_db()
    assert (session.status, session.end_reason, session.end_detail) == (
        SessionStatus.TORN_DOWN,
        EndReason.FAILED,
        "its sandbox stopped",
    )
    assert not socket_dir(session).exists()
    assert gone_reason(client, opened.token) == (410, "failed")
    assert [action for action, _ in events(session)] == [
        "preview.created",
        "preview.ready",
        "preview.failed",
        "preview.torn_down",
    ]


def killed_mid_start(start_worker: Any, buyer: Any) -> PreviewSession:
    """A session whose worker was killed while its sandbox started: the sandbox went with it."""
    worker = start_worker(name="-first")
    session = preview_open(buyer=buyer, sku_slug=slow_sku().slug).session
    wait_until(
        lambda: (
            status_of(session.pk) == SessionStatus.STARTING
            and LocalProvisioner().alive(session.environment_id)
        ),
        worker=worker,
    )
    assert bwrap_parent(session.environment_id) == worker.pid

    worker.kill()

    assert worker.process.returncode == -9
    wait_until(lambda: nothing_runs(session.environment_id), timeout=5)
    session.refresh_from_db()
    assert (session.status, session.ready_at) == (SessionStatus.STARTING, None)
    return session


@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_mid_start_leaves_nothing_and_the_sweep_fails_the_session(
    start_worker, buyer, settings
):
    settings.PREVIEW_START_TIMEOUT_SECONDS = 2
    session = killed_mid_start(start_worker, buyer)
    # The sweep gives a start its timeout and 15 s more before it takes its worker for dead.
    PreviewSession.objects.filter(pk=session.pk).update(
        started_at=timezone.now() - timedelta(seconds=2 + 15 + 1)
    )

    result = previews_sweep()

    assert (result.stuck, result.exited, result.expired) == (1, 0, 0)
    session.refresh_from_db()
    detail = "its start did not finish: the worker starting it stopped"
    assert (session.status, session.end_reason, session.end_detail) == (
        SessionStatus.TORN_DOWN,
        EndReason.FAILED,
        detail,
    )
    assert nothing_runs(session.environment_id)
    assert not socket_dir(session).exists()
    assert events(session)[1:] == [
        ("preview.failed", {"reason": "failed", "detail": detail}),
        ("preview.torn_down", torn_down_data("failed", found=False)),
    ]


@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_mid_start_its_start_delivered_again_fails_the_session(start_worker, buyer):
    session = killed_mid_start(start_worker, buyer)
    second = start_worker(name="-second", purge=False)

    # The broker hands the killed worker's unacknowledged start to another worker (Redis does
    # so after its visibility timeout, hours; sent again here).
    tasks.preview_start.delay(str(session.pk))

    wait_until(lambda: status_of(session.pk) == SessionStatus.TORN_DOWN, worker=second)
    session.refresh_from_db()
    detail = "the worker starting its sandbox stopped before it was ready"
    assert (session.end_reason, session.end_detail, session.ready_at) == (
        EndReason.FAILED,
        detail,
        None,
    )
    assert nothing_runs(session.environment_id)
    assert not socket_dir(session).exists()
    assert events(session)[1:] == [
        ("preview.failed", {"reason": "failed", "detail": detail}),
        ("preview.torn_down", torn_down_data("failed", found=False)),
    ]


@pytest.mark.django_db(transaction=True)
def test_a_session_ended_and_torn_down_before_its_sandbox_exists_leaves_nothing_running(buyer):
    # A large file to copy: the sandbox does not exist yet while the start is under way, so the
    # teardown that runs then finds nothing; the start must remove what it makes afterwards.
    # The start runs on this thread, as on a worker: bwrap dies with the thread that made it.
    sku = previewable_sku()
    add_material(
        sku,
        uploads=[*sandbox_uploads(), Upload("big.bin", io.BytesIO(b"\0" * (48 * 1024 * 1024)))],
        command=SERVER_COMMAND,
    )
    opened = preview_open(buyer=buyer, sku_slug=sku.slug)
    session_id = opened.session.pk
    acted: list[str] = []

    def end_it_mid_start() -> None:
        try:
            deadline = time.monotonic() + 10
            while status_of(session_id) == SessionStatus.REQUESTED and time.monotonic() < deadline:
                time.sleep(0.001)  # the copy takes tens of milliseconds: act within them
            acted.append(status_of(session_id))
            preview_revoke(session_id=session_id, reason="ended mid-start", actor=TEST_ACTOR)
            acted.append(preview_teardown(session_id=session_id))
        finally:
            connection.close()

    ender = threading.Thread(target=end_it_mid_start)
    ender.start()
    outcome = preview_start(session_id=session_id)
    ender.join(timeout=30)

    session = session_of(session_id)
    assert acted == [SessionStatus.STARTING, SessionStatus.TORN_DOWN]
    assert outcome == SessionStatus.TORN_DOWN
    assert session.status == SessionStatus.TORN_DOWN
    assert nothing_runs(session.environment_id)
