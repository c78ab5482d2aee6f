"""Previews' metrics as a scraper reads them on /metrics, after real sessions.

The sessions start in this process (`preview_start`, as a worker runs it), so the start latency
and the teardown lag, observed where the work is done, are in this process's registry; what is
observed once a transaction commits runs with django_capture_on_commit_callbacks, and the tasks
a commit hands over run here (eager) rather than waiting in the broker for a worker.
"""

import shutil
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from celery import current_app
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from previews.metrics import start_latency, teardown_lag
from previews.models import PreviewSession, SessionStatus
from previews.provisioners.local import LocalProvisioner
from previews.sandbox import DEMO_SERVER, Sandbox, SandboxSpec, available, demo_command
from previews.services import (
    preview_expire,
    preview_open,
    preview_start,
    previews_gc,
    previews_sweep,
)
from tests.previews.factories import previewable_sku

REASON = available()
pytestmark = [
    pytest.mark.skipif(REASON is not None, reason=REASON or ""),
    pytest.mark.django_db,
]
METRICS_TOKEN = "mt-previews-Qe4rT7yU1iO3pA5sD8fG0hJ2"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: Client, settings: Any) -> Samples:
    """Every sample on /metrics, read with the metrics token as Prometheus would."""
    settings.METRICS_TOKEN = METRICS_TOKEN
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {METRICS_TOKEN}")
    assert response.status_code == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }


def at(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def bucket_bounds(histogram: Any) -> list[str]:
    """The `le` labels of a histogram's buckets, as the exposition writes them."""
    return [floatToGoString(bound) for bound in histogram._upper_bounds]


@pytest.fixture
def tasks_here() -> Iterator[None]:
    saved = current_app.conf.task_always_eager
    current_app.conf.task_always_eager = True
    yield
    current_app.conf.task_always_eager = saved


@pytest.fixture(autouse=True)
def _no_sandbox_outlives_its_test(db: None) -> Iterator[None]:
    yield
    for environment_id in PreviewSession.objects.values_list("environment_id", flat=True):
        LocalProvisioner().teardown(environment_id)


def test_the_sweep_puts_the_open_sessions_and_the_queue_on_metrics(
    client, settings, buyer, other_buyer
):
    settings.PREVIEW_CAPACITY = 5
    sku = previewable_sku()
    preview_open(buyer=other_buyer, sku_slug=sku.slug)  # no worker takes it: requested
    ready = preview_open(buyer=buyer, sku_slug=sku.slug)
    assert preview_start(session_id=ready.session.pk) == SessionStatus.READY

    previews_sweep()

    samples = scrape(client, settings)
    assert {
        status: at(samples, "marketplace_preview_sessions_active", status=status)
        for status in ("requested", "starting", "ready")
    } == {"requested": 1, "starting": 0, "ready": 1}
    assert at(samples, "marketplace_preview_queue_depth") == 1
    assert at(samples, "marketplace_preview_capacity") == 5


def test_a_start_an_expiry_and_a_leaked_sandbox_are_on_metrics(
    client, settings, buyer, tasks_here, django_capture_on_commit_callbacks
):
    before = scrape(client, settings)
    opened = preview_open(buyer=buyer, sku_slug=previewable_sku().slug)

    with django_capture_on_commit_callbacks(execute=True):
        assert preview_start(session_id=opened.session.pk) == SessionStatus.READY
    session = PreviewSession.objects.get(pk=opened.session.pk)
    latency = (session.ready_at - session.created_at).total_seconds()
    # Its time runs out two seconds ago; the expiry task ends it and tears it down.
    PreviewSession.objects.filter(pk=session.pk).update(
        created_at=timezone.now() - timedelta(minutes=20),
        expires_at=timezone.now() - timedelta(seconds=2),
    )
    with django_capture_on_commit_callbacks(execute=True):
        assert preview_expire(session_id=session.pk) == SessionStatus.TORN_DOWN
    session.refresh_from_db()
    lag = (session.torn_down_at - session.expires_at).total_seconds()
    leaked = stray_sandbox(settings.PREVIEW_DIR)
    try:
        assert previews_gc().leaked_ids == [leaked.sandbox_id]
    finally:
        leaked.stop()
        shutil.rmtree(leaked.spec.material_dir, ignore_errors=True)

    after = scrape(client, settings)

    def delta(name: str, **labels: str) -> float:
        return at(after, name, **labels) - at(before, name, **labels)

    start = "marketplace_preview_start_seconds"
    assert delta(f"{start}_count", outcome="ready") == 1
    assert delta(f"{start}_count", outcome="failed") == 0
    assert delta(f"{start}_sum", outcome="ready") == pytest.approx(latency, abs=1e-6)
    assert {
        le: delta(f"{start}_bucket", outcome="ready", le=le) for le in bucket_bounds(start_latency)
    } == {le: 1.0 if float(le) >= latency else 0.0 for le in bucket_bounds(start_latency)}
    teardown = "marketplace_preview_teardown_lag_seconds"
    assert 2 <= lag < 10
    assert delta(f"{teardown}_count") == 1
    assert delta(f"{teardown}_sum") == pytest.approx(lag, abs=1e-6)
    assert {le: delta(f"{teardown}_bucket", le=le) for le in bucket_bounds(teardown_lag)} == {
        le: 1.0 if float(le) >= lag else 0.0 for le in bucket_bounds(teardown_lag)
    }
    assert delta("marketplace_preview_sessions_ended_total", reason="expired") == 1
    assert delta("marketplace_preview_leaked_sandboxes_total", provisioner="local") == 1
    assert delta("marketplace_preview_leaked_sandboxes_total", provisioner="kubernetes") == 0
    # The collector's sweep refreshed the gauges: nothing is open any more.
    assert at(after, "marketplace_preview_sessions_active", status="ready") == 0
    assert at(after, "marketplace_preview_queue_depth") == 0


def stray_sandbox(root: Path) -> Sandbox:
    """A sandbox no session knows, in the local provisioner's layout under `root`."""
    sandbox_id = uuid.uuid4().hex
    material = root / f"stray-{sandbox_id}"
    material.mkdir(mode=0o755)
    material.chmod(0o755)
    sockets = root / "sockets"
    sockets.mkdir(exist_ok=True)
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
