"""`previews_gc` and `previews_revoke`, as an operator runs them."""

import io
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from accounts.models import ApprovalRequest, ApprovalStatus
from audit.models import AuditEvent
from marketplace.models import User
from marketplace.roles import CONTENT_OPS, SECURITY, SUPPORT
from previews import sandbox
from previews.approvals import ISOLATE_ALL
from previews.models import EndReason, MaterialKind, PreviewPause, PreviewSession, SessionStatus
from previews.provisioners.local import LocalProvisioner
from previews.services import PreviewOpened, preview_open
from tests.conftest import _staff
from tests.previews.factories import previewable_sku
from tests.support.approvals import second_person

pytestmark = pytest.mark.django_db


def run(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue().strip(), err.getvalue().strip()


def opened(slug: str, email: str) -> PreviewOpened:
    return preview_open(buyer=User.objects.create_user(email=email), sku_slug=slug)


@pytest.fixture(autouse=True)
def own_preview_folder(settings: Any) -> Iterator[Path]:
    """The collector looks at the sandboxes of the preview folder, which the suite's process
    shares across tests: one an earlier test left running would be counted here as leaked. Each
    test gets its own (world-traversable, as a sandbox's host uid must reach its binds)."""
    folder = Path(tempfile.mkdtemp(prefix="mkp-previews-gc-"))
    folder.chmod(0o711)
    settings.PREVIEW_DIR = folder
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def sample_sku(db: None) -> Any:
    return previewable_sku(MaterialKind.SAMPLE, slug="sample-kit")


@pytest.fixture
def security(db: None) -> User:
    return _staff("security@example.com", SECURITY)


# --- previews_gc ---------------------------------------------------------------------------------


def test_gc_prints_its_counts(sample_sku):
    session = opened("sample-kit", "viewer@example.com").session
    now = timezone.now()
    PreviewSession.objects.filter(pk=session.pk).update(
        created_at=now - timedelta(hours=2), expires_at=now - timedelta(hours=1)
    )

    out, _ = run("previews_gc")

    assert out == "expired=1 stuck=0 exited=0 torn_down=0 leaked=0"
    session.refresh_from_db()
    assert (session.status, session.end_reason) == (SessionStatus.TORN_DOWN, EndReason.EXPIRED)


@pytest.mark.skipif(sandbox.available() is not None, reason=sandbox.available() or "")
def test_gc_tears_down_a_sandbox_no_session_owns(db):
    # A sandbox of this platform's preview folder (its socket folder there), as a worker killed
    # between starting it and recording it leaves behind; no session names it.
    provisioner = LocalProvisioner()
    leaked_id = uuid.uuid4().hex
    socket_dir = provisioner.socket_root / leaked_id
    socket_dir.mkdir(parents=True)
    material = provisioner.root / "material-of-the-test"
    material.mkdir()
    material.chmod(0o755)
    spec = sandbox.SandboxSpec(
        material_dir=material,
        command=["/usr/bin/python3", "-I", "-c", "import time; time.sleep(60)"],
        socket_dir=socket_dir,
        ttl_seconds=60,
    )
    box = sandbox.Sandbox.start(spec, stdout=subprocess.DEVNULL, sandbox_id=leaked_id)
    try:
        deadline = time.monotonic() + 5
        while not provisioner.alive(leaked_id) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert provisioner.alive(leaked_id), "the sandbox did not start"

        out, err = run("previews_gc")

        assert out == "expired=0 stuck=0 exited=0 torn_down=0 leaked=1"
        assert err == f"leaked sandbox torn down: {leaked_id}"
        assert provisioner.alive(leaked_id) is False
        event = AuditEvent.objects.get(action="preview.leaked_torn_down")
        assert event.data == {"count": 1, "environments": [leaked_id]}
    finally:
        box.stop()


# --- previews_revoke ---------------------------------------------------------------------------


def test_revoke_one_session(sample_sku, client):
    preview = opened("sample-kit", "viewer@example.com")
    other = opened("sample-kit", "other@example.com").session

    out, err = run("previews_revoke", "--session", str(preview.session.pk), "--reason", "leak")

    assert out == str(preview.session.pk)
    assert err == f"Session {preview.session.pk}: ended (revoked)."
    gone = client.get(f"/previews/{preview.token}/")
    assert (gone.status_code, gone.json()["reason"]) == (410, "revoked")
    other.refresh_from_db()
    assert other.status == SessionStatus.READY
    event = AuditEvent.objects.get(action="preview.ended")
    assert (event.actor_type, event.actor_id) == ("system", "previews_revoke")


def test_revoke_a_skus_sessions_and_pause_it(sample_sku, buyer_client):
    opened("sample-kit", "viewer@example.com")
    other_sku = previewable_sku(MaterialKind.SAMPLE, slug="other-kit")
    untouched = opened(other_sku.slug, "other@example.com").session

    out, err = run("previews_revoke", "--sku", "sample-kit", "--reason", "breakout")

    assert out == "1"
    pause = PreviewPause.objects.get()
    assert (
        err == f"sample-kit isolated: 1 session(s) revoked; new sessions paused (pause {pause.pk})."
    )
    assert (pause.sku, pause.reason, pause.created_by) == (sample_sku, "breakout", None)
    untouched.refresh_from_db()
    assert untouched.status == SessionStatus.READY
    assert buyer_client.post("/api/v1/skus/sample-kit/previews").status_code == 503


def test_revoke_a_skus_sessions_without_pausing_as_a_named_person(sample_sku, security):
    opened("sample-kit", "viewer@example.com")

    _, err = run(
        "previews_revoke",
        "--sku",
        "sample-kit",
        "--reason",
        "rotate",
        "--no-pause",
        "--as",
        security.email,
    )

    assert err == "sample-kit isolated: 1 session(s) revoked; not paused."
    assert not PreviewPause.objects.exists()
    assert AuditEvent.objects.get(action="preview.pool_isolated").actor_id == str(security.uuid)


def test_revoke_all_files_the_approval_and_another_security_member_applies_it(sample_sku, security):
    opened("sample-kit", "viewer@example.com")

    out, err = run("previews_revoke", "--all", "--reason", "breakout", "--as", security.email)

    request = ApprovalRequest.objects.get(kind=ISOLATE_ALL)
    assert out == str(request.pk)
    assert f"Request {request.pk} is filed" in err
    assert f"approvals approve {request.pk} --as EMAIL" in err
    assert request.status == ApprovalStatus.PENDING
    assert PreviewSession.objects.open().count() == 1
    filed = AuditEvent.objects.get(action="approval.requested")
    assert filed.data["via"] == "command"

    with pytest.raises(CommandError, match="Refused, nothing changed"):
        run("approvals", "approve", str(request.pk), "--as", security.email)
    run("approvals", "approve", str(request.pk), "--as", second_person().email)

    request.refresh_from_db()
    assert request.status == ApprovalStatus.APPLIED
    assert not PreviewSession.objects.open().exists()
    assert PreviewPause.objects.get().sku is None


def test_revoke_all_with_a_threshold_of_one_applies_at_once(sample_sku, security, settings):
    settings.APPROVAL_THRESHOLD = 1
    opened("sample-kit", "viewer@example.com")

    _, err = run(
        "previews_revoke", "--all", "--reason", "drill", "--no-pause", "--as", security.email
    )

    assert "was applied at once" in err
    assert not PreviewSession.objects.open().exists()
    assert not PreviewPause.objects.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sku", "no-such-kit", "--reason", "x"], "There is no SKU 'no-such-kit'."),
        (["--sku", "sample-kit"], "the following arguments are required: --reason"),
        (["--sku", "sample-kit", "--reason", "  "], "--reason must say why"),
        (["--sku", "sample-kit", "--all", "--reason", "x"], "not allowed with argument"),
        (["--reason", "x"], "one of the arguments --session --sku --all is required"),
        (["--all", "--reason", "x"], "name yourself with --as EMAIL"),
        (["--session", "not-a-uuid", "--reason", "x"], "is not a session id"),
        (["--session", str(uuid.UUID(int=1)), "--reason", "x"], "There is no preview"),
        (["--all", "--reason", "x", "--as", "nobody@example.com"], "not an active staff"),
    ],
)
def test_revoke_refuses_what_it_cannot_do_and_changes_nothing(sample_sku, args, message):
    opened("sample-kit", "viewer@example.com")

    with pytest.raises(CommandError, match=message.replace("(", r"\(")):
        run("previews_revoke", *args)

    assert PreviewSession.objects.open().count() == 1
    assert not PreviewPause.objects.exists()
    assert not ApprovalRequest.objects.exists()


@pytest.mark.parametrize(("target", "role"), [("--sku", SUPPORT), ("--session", CONTENT_OPS)])
def test_a_named_person_must_hold_the_role(sample_sku, target, role):
    session = opened("sample-kit", "viewer@example.com").session
    person = _staff("someone@example.com", role)
    value = "sample-kit" if target == "--sku" else str(session.pk)

    with pytest.raises(CommandError, match="may not do this"):
        run("previews_revoke", target, value, "--reason", "x", "--as", person.email)

    assert PreviewSession.objects.open().count() == 1
