"""The one-minute sweep and the hourly collector, on real bubblewrap sandboxes.

The sessions here are started in this process (`preview_start`, as a worker would run it), so
their sandboxes are children of the test; no task runs (the test's transaction never commits),
which is how a lost task looks to the sweep. Time passing is an update of the session's dates.
"""

import io
import os
import shutil
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone
from prometheus_client import REGISTRY

from previews.models import EndReason, PreviewMaterial, PreviewSession, SessionStatus
from previews.provisioners import MaterialFile
from previews.provisioners.local import LocalProvisioner
from previews.sandbox import (
    DEMO_SERVER,
    Sandbox,
    SandboxSpec,
    available,
    demo_command,
    kill_sandbox,
    processes_of,
    sandbox_id_of,
    sandboxes_running,
)
from previews.services import (
    Upload,
    preview_buyer_end,
    preview_material_withdraw,
    preview_open,
    preview_start,
    previews_gc,
    previews_sweep,
)
from tests.catalog.factories import TEST_ACTOR
from tests.previews.factories import add_material, previewable_sku, sandbox_uploads
from tests.support.audit import sealed_events

REASON = available()
pytestmark = [
    pytest.mark.skipif(REASON is not None, reason=REASON or ""),
    pytest.mark.django_db,
]

NOTHING = {"expired": 0, "stuck": 0, "exited": 0, "torn_down": 0, "leaked": 0}


@pytest.fixture(autouse=True)
def _no_sandbox_outlives_its_test(db: None):
    """The database rolls back after each test, but sandboxes do not: the next test's
    collector would count them as leaked."""
    yield
    for environment_id in PreviewSession.objects.values_list("environment_id", flat=True):
        LocalProvisioner().teardown(environment_id)


def ready_session(buyer: Any, sku: Any) -> PreviewSession:
    """A session opened and started here, as the worker does it: its sandbox runs."""
    opened = preview_open(buyer=buyer, sku_slug=sku.slug)
    assert preview_start(session_id=opened.session.pk) == SessionStatus.READY
    session = PreviewSession.objects.get(pk=opened.session.pk)
    assert LocalProvisioner().alive(session.environment_id) is True
    return session


def gone(environment_id: str) -> bool:
    running = {sandbox_id_of(pid) for pid in sandboxes_running()}
    return environment_id not in running and processes_of(environment_id) == []


def events(session: PreviewSession) -> list[tuple[str, dict[str, Any]]]:
    return [
        (event.action, event.data)
        for event in sealed_events(subject_type="preview", subject_id=str(session.pk))
    ]


def pushed_back(session: PreviewSession, **fields: timedelta) -> None:
    """Moves the session's dates into the past, as if that much time had gone by."""
    now = timezone.now()
    PreviewSession.objects.filter(pk=session.pk).update(
        **{name: now - ago for name, ago in fields.items()}
    )


def stray_sandbox(root: Path, sandbox_id: str) -> Sandbox:
    """A sandbox started directly, not through any session: laid out as the local provisioner
    lays out its own under `root` (its socket folder in `root/sockets/<id>`)."""
    material = root / f"stray-{sandbox_id}"
    material.mkdir(mode=0o755, parents=True)
    material.chmod(0o755)
    (material / "index.html").write_text("<h1>stray</h1>")
    (material / "index.html").chmod(0o644)
    sockets = root / "sockets"
    sockets.mkdir(parents=True, exist_ok=True)
    sockets.chmod(0o711)
    (sockets / sandbox_id).mkdir(mode=0o700)
    spec = SandboxSpec(
        material_dir=material,
        command=demo_command(),
        socket_dir=sockets / sandbox_id,
        programs=(DEMO_SERVER,),
        ttl_seconds=60,
    )
    box = Sandbox.start(spec, sandbox_id=sandbox_id)
    assert box.wait_ready(5)
    return box


@pytest.fixture
def strays(settings: Any):
    """Starts stray sandboxes; stops (and reaps) whatever is left of them after the test."""
    started: list[tuple[Sandbox, Path]] = []

    def start(sandbox_id: str, root: Path | None = None) -> Sandbox:
        root = root or settings.PREVIEW_DIR
        box = stray_sandbox(root, sandbox_id)
        started.append((box, root))
        return box

    yield start
    for box, root in started:
        box.stop()
        shutil.rmtree(root / f"stray-{box.sandbox_id}", ignore_errors=True)
        shutil.rmtree(root / "sockets" / box.sandbox_id, ignore_errors=True)


# --- The sweep ---------------------------------------------------------------------------------


def test_the_sweep_ends_an_expired_session_and_tears_its_sandbox_down(buyer):
    session = ready_session(buyer, previewable_sku())
    pushed_back(session, created_at=timedelta(minutes=20), expires_at=timedelta(seconds=1))

    result = previews_sweep()

    assert result.as_dict() == {**NOTHING, "expired": 1}
    session.refresh_from_db()
    assert (session.status, session.end_reason, session.end_detail) == (
        SessionStatus.TORN_DOWN,
        EndReason.EXPIRED,
        "its time ran out",
    )
    assert gone(session.environment_id)
    lag = session.torn_down_at - session.expires_at
    assert timedelta(seconds=1) <= lag < timedelta(seconds=5)
    assert [action for action, _ in events(session)] == [
        "preview.created",
        "preview.ready",
        "preview.ended",
        "preview.torn_down",
    ]
    assert events(session)[-1][1] == {
        "reason": "expired",
        "sandbox_found": True,
        "lag_ms": round(lag.total_seconds() * 1000),
    }
    # A second sweep finds nothing more to do.
    assert previews_sweep().as_dict() == NOTHING


def test_the_sweep_fails_a_session_no_worker_started_within_the_start_timeout(
    buyer, other_buyer, settings
):
    settings.PREVIEW_START_TIMEOUT_SECONDS = 10
    sku = previewable_sku()
    stuck = preview_open(buyer=buyer, sku_slug=sku.slug).session
    fresh = preview_open(buyer=other_buyer, sku_slug=sku.slug).session
    pushed_back(stuck, created_at=timedelta(seconds=11))

    result = previews_sweep()

    assert result.as_dict() == {**NOTHING, "stuck": 1}
    stuck.refresh_from_db()
    assert (stuck.status, stuck.end_reason, stuck.end_detail) == (
        SessionStatus.TORN_DOWN,
        EndReason.FAILED,
        "no worker started its sandbox within 10 s",
    )
    assert events(stuck)[1:] == [
        (
            "preview.failed",
            {"reason": "failed", "detail": "no worker started its sandbox within 10 s"},
        ),
        ("preview.torn_down", {"reason": "failed", "sandbox_found": False, "lag_ms": None}),
    ]
    fresh.refresh_from_db()
    assert fresh.status == SessionStatus.REQUESTED


def test_the_sweep_fails_a_start_left_unfinished_and_kills_what_it_left_running(
    buyer, settings, strays
):
    # A worker that died while starting, in the few milliseconds before bwrap's
    # --die-with-parent is armed, leaves its sandbox running and the session `starting`.
    settings.PREVIEW_START_TIMEOUT_SECONDS = 10
    session = preview_open(buyer=buyer, sku_slug=previewable_sku().slug).session
    PreviewSession.objects.filter(pk=session.pk).update(
        status=SessionStatus.STARTING, started_at=timezone.now() - timedelta(seconds=24)
    )
    left = strays(session.environment_id)
    assert previews_sweep().as_dict() == NOTHING  # within the timeout and its margin

    pushed_back(session, started_at=timedelta(seconds=26))
    result = previews_sweep()

    assert result.as_dict() == {**NOTHING, "stuck": 1}
    session.refresh_from_db()
    assert (session.status, session.end_reason, session.end_detail) == (
        SessionStatus.TORN_DOWN,
        EndReason.FAILED,
        "its start did not finish: the worker starting it stopped",
    )
    assert gone(session.environment_id)
    assert not left.alive() or left.process.wait(2) is not None
    assert not (settings.PREVIEW_DIR / "sockets" / session.environment_id).exists()
    assert events(session)[-1] == (
        "preview.torn_down",
        {"reason": "failed", "sandbox_found": True, "lag_ms": None},
    )


def test_the_sweep_tears_down_an_ended_session_whose_teardown_task_was_lost(buyer, settings):
    session = ready_session(buyer, previewable_sku())
    preview_buyer_end(buyer=buyer, session_id=session.pk)  # its teardown task is never sent

    assert previews_sweep().as_dict() == NOTHING  # within the 30 s a task has to do it
    assert LocalProvisioner().alive(session.environment_id) is True

    pushed_back(session, ended_at=timedelta(seconds=31))
    result = previews_sweep()

    assert result.as_dict() == {**NOTHING, "torn_down": 1}
    session.refresh_from_db()
    assert (session.status, session.end_reason) == (SessionStatus.TORN_DOWN, EndReason.ENDED)
    assert gone(session.environment_id)
    assert not (settings.PREVIEW_DIR / "sockets" / session.environment_id).exists()


def test_the_sweep_fails_a_ready_session_whose_sandbox_stopped(buyer):
    session = ready_session(buyer, previewable_sku())
    [pid] = [pid for pid in sandboxes_running() if sandbox_id_of(pid) == session.environment_id]
    kill_sandbox(pid)

    result = previews_sweep()

    assert result.as_dict() == {**NOTHING, "exited": 1}
    session.refresh_from_db()
    assert (session.status, session.end_reason, session.end_detail) == (
        SessionStatus.TORN_DOWN,
        EndReason.FAILED,
        "its sandbox stopped",
    )
    assert gone(session.environment_id)
    assert events(session)[2:] == [
        ("preview.failed", {"reason": "failed", "detail": "its sandbox stopped"}),
        ("preview.torn_down", {"reason": "failed", "sandbox_found": False, "lag_ms": None}),
    ]


# --- The collector -----------------------------------------------------------------------------


def leaked_total() -> float:
    return (
        REGISTRY.get_sample_value(
            "marketplace_preview_leaked_sandboxes_total", {"provisioner": "local"}
        )
        or 0.0
    )


def test_the_collector_kills_a_sandbox_no_session_knows_and_spares_an_open_ones(
    buyer, settings, strays
):
    session = ready_session(buyer, previewable_sku())
    leaked_id = "deadbeef" + uuid.uuid4().hex[:24]
    leaked = strays(leaked_id)
    before = leaked_total()

    result = previews_gc()

    assert result.as_dict() == {**NOTHING, "leaked": 1}
    assert result.leaked_ids == [leaked_id]
    assert leaked_total() - before == 1
    assert gone(leaked_id)
    assert leaked.process.wait(2) is not None
    assert not (settings.PREVIEW_DIR / "sockets" / leaked_id).exists()
    [event] = sealed_events(action="preview.leaked_torn_down")
    assert (event.actor_type, event.actor_id) == ("service", "previews")
    assert (event.subject_type, event.subject_id) == ("preview-pool", "local")
    assert event.data == {"count": 1, "environments": [leaked_id]}
    # The open session's sandbox is its own: untouched, still answering.
    assert LocalProvisioner().alive(session.environment_id) is True
    session.refresh_from_db()
    assert session.status == SessionStatus.READY
    assert previews_gc().as_dict() == NOTHING


def test_the_collector_kills_the_sandbox_of_a_session_already_torn_down(buyer, strays):
    session = ready_session(buyer, previewable_sku())
    preview_buyer_end(buyer=buyer, session_id=session.pk)
    pushed_back(session, ended_at=timedelta(seconds=31))
    previews_sweep()
    session.refresh_from_db()
    assert session.status == SessionStatus.TORN_DOWN
    # The same sandbox comes back (a start retried behind the platform's back, say).
    strays(session.environment_id)

    result = previews_gc()

    assert result.as_dict() == {**NOTHING, "leaked": 1}
    assert result.leaked_ids == [session.environment_id]
    assert gone(session.environment_id)


@pytest.fixture
def other_root():
    """Another platform's preview folder on this host (0711, as the test settings make one)."""
    root = Path(tempfile.mkdtemp(prefix="mkp-other-previews-"))
    root.chmod(0o711)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_the_collector_leaves_alone_the_sandboxes_of_another_preview_folder(
    buyer, strays, other_root
):
    # Another platform on this host (another deployment, another test process) runs its
    # sandboxes under its own MARKETPLACE_PREVIEW_DIR; their sessions are in its database.
    theirs = strays(uuid.uuid4().hex, root=other_root)

    result = previews_gc()

    assert result.as_dict() == NOTHING
    assert theirs.alive()
    assert processes_of(theirs.sandbox_id) != []


def extra_file(tag: str) -> Upload:
    """A file that makes the material's digest its own."""
    return Upload("version.txt", io.BytesIO(f"{tag} {uuid.uuid4().hex}".encode()))


def files_of(material: PreviewMaterial) -> tuple[MaterialFile, ...]:
    return tuple(
        MaterialFile(path=f.path, storage_key=f.storage_key, sha256=f.sha256, size=f.size)
        for f in material.files.order_by("path")
    )


def test_the_collector_prunes_material_copies_no_longer_current(buyer):
    sku = previewable_sku()
    provisioner = LocalProvisioner()
    old = sku.preview_materials.get()
    ready_session(buyer, sku)  # copies v1 and runs it; v2 then ends it (rotated)
    new = add_material(sku, uploads=[*sandbox_uploads(), extra_file("v2")])
    withdrawn = add_material(sku, uploads=[*sandbox_uploads(), extra_file("v3")])
    preview_material_withdraw(material_id=withdrawn.pk, reason="broken", actor=TEST_ACTOR)
    for material in (new, withdrawn):
        provisioner.material_dir(material.digest, files_of(material))
    copies = provisioner.material_root
    # A copy another worker is making right now, and one a killed worker left long ago.
    in_progress = copies / f".{new.digest}.{uuid.uuid4().hex}"
    abandoned = copies / f".{old.digest}.{uuid.uuid4().hex}"
    in_progress.mkdir()
    abandoned.mkdir()
    long_ago = time.time() - 2 * 3600
    os.utime(abandoned, (long_ago, long_ago))

    previews_gc()

    remaining = {entry.name for entry in copies.iterdir()}
    assert new.digest in remaining
    assert in_progress.name in remaining
    assert old.digest not in remaining
    assert withdrawn.digest not in remaining
    assert abandoned.name not in remaining
    shutil.rmtree(in_progress)
