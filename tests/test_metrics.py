"""Every Prometheus metric the platform defines: each one moved by the real code path that owns
it (an HTTP request, a service, a task), and each one on /metrics.

Values are read from this process's registry before and after: pytest-xdist runs each worker in
a process of its own, with a registry of its own, so the deltas are exact. Counters committed
with a transaction (licenses) are counted in `transaction.on_commit`; the tests run inside the
test's transaction, so they let those callbacks run with django_capture_on_commit_callbacks,
which drops the callbacks of a block that rolled back just as a real rollback does.
"""

import base64
import importlib
import os
import pkgutil
import shutil
import tempfile
import time
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.files.storage import default_storage
from django.db import transaction
from django.test import Client
from django.utils import timezone
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families
from rest_framework.test import APIClient

from audit.checkpoints import checkpoint_create, unwitnessed_update
from audit.exports import ExportConflict, audit_exports_catch_up
from audit.fanout import KernelPushFailed, kernel_push
from audit.sealer import SEAL_LOCK, UnsealableEvent, seal_all, seal_pending
from audit.services import audit_append
from licensing.models import Delivery, License
from licensing.services import delivery_package, license_issue, license_reissue
from licensing.services.fulfilment import LICENSING_WORKER
from licensing.tasks import delivery_package as delivery_package_task
from licensing.tasks import order_fulfil as order_fulfil_task
from marketplace.actors import Actor
from orders.models import FinancePosting, Order, OrderStatus, PostingStatus, WebhookEvent
from orders.services import finance_posting_send, webhook_event_process, webhook_secrets
from orders.tasks import orders_metrics_refresh
from previews.models import EndReason, MaterialKind, PreviewSession, SessionStatus
from previews.sandbox import Sandbox, SandboxSpec
from previews.sandbox import available as sandbox_available
from previews.services import (
    preview_buyer_end,
    preview_expire,
    preview_open,
    preview_start,
    previews_gc,
    previews_sweep,
)
from tests.catalog.factories import TEST_ACTOR
from tests.licensing.factories import order_licensed, order_paid, sku_licensed
from tests.orders.factories import order_checked_out, sku_for_sale
from tests.orders.stripe_events import session_event, signed
from tests.previews.factories import add_material, previewable_sku
from tests.support.kernel import KernelServer, json_reply, server_error
from tests.support.pg import pg_connect

pytestmark = pytest.mark.django_db

# The apps in their dependency order (DESIGN.md): every module of each is searched for metrics.
PLATFORM_APPS = ("marketplace", "audit", "accounts", "catalog", "orders", "licensing", "previews")
WEBHOOK_URL = "/marketplace/stripe/webhook"


def value(name: str, **labels: str) -> float:
    """A sample's value in this process's registry; 0 for a labelled series not seen yet."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def platform_metrics() -> dict[str, MetricWrapperBase]:
    """Every metric defined at module level anywhere in the platform's apps, by family name
    (a counter's without `_total`). Imports every module, so none is missed for not having
    been imported yet."""
    found: dict[str, MetricWrapperBase] = {}
    for app in PLATFORM_APPS:
        package = importlib.import_module(app)
        for module_info in pkgutil.walk_packages(package.__path__, prefix=f"{app}."):
            module = importlib.import_module(module_info.name)
            for attribute in vars(module).values():
                if isinstance(attribute, MetricWrapperBase):
                    [family] = attribute.describe()
                    found[family.name] = attribute
    return found


METRICS_TOKEN = "mt-Zr8qW3nX5vL1pK7sD9fB2hJ4gT6yC0"


def scraped(client: Client, settings: Any) -> dict[str, str]:
    """/metrics as Prometheus parses it, read as a scraper does, with the metrics token:
    each family's name and type."""
    settings.METRICS_TOKEN = METRICS_TOKEN
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {METRICS_TOKEN}")
    assert response.status_code == 200
    return {
        family.name: family.type
        for family in text_string_to_metric_families(response.content.decode())
    }


# --- Every metric is defined once, registered and scraped ------------------------------------


def test_every_metric_the_platform_defines_is_on_metrics(
    api_client: APIClient, settings: Any
) -> None:
    defined = platform_metrics()
    families = scraped(api_client, settings)

    assert defined, "no metric found in the platform's modules"
    for name, metric in defined.items():
        assert name.startswith("marketplace_"), name
        assert families.get(name) == metric._type, f"{name} is not on /metrics as a {metric._type}"
    # ...and the other way round: whatever the registry holds under the platform's prefix.
    registered = {
        family.name: family.type
        for family in REGISTRY.collect()
        if family.name.startswith("marketplace_")
    }
    assert set(registered) == set(defined)
    for name, kind in registered.items():
        assert families.get(name) == kind, name


def test_every_metric_the_platform_defines_has_a_test_here() -> None:
    source = Path(__file__).read_text()
    untested = [name for name in platform_metrics() if f'"{name}' not in source]
    assert untested == [], f"add a test to {Path(__file__).name} for {untested}"


# --- licensing ---------------------------------------------------------------------------------

LICENSES = "marketplace_licenses_issued_total"


def test_a_released_orders_license_is_counted_once_it_commits(
    buyer: Any, django_capture_on_commit_callbacks: Any
) -> None:
    order = order_paid(buyer)
    first, reissued = value(LICENSES, kind="first"), value(LICENSES, kind="reissue")

    with django_capture_on_commit_callbacks(execute=True):
        result = order_fulfil_task.apply(args=[str(order.pk)]).get()
    with django_capture_on_commit_callbacks(execute=True):
        again = order_fulfil_task.apply(args=[str(order.pk)]).get()

    assert result["license"] == str(License.objects.get(order=order).pk)
    assert again["license"] is None  # the second run issues nothing, and counts nothing
    assert value(LICENSES, kind="first") == first + 1
    assert value(LICENSES, kind="reissue") == reissued


def test_a_reissued_license_is_counted_as_a_reissue(
    buyer: Any, django_capture_on_commit_callbacks: Any
) -> None:
    order = order_licensed(buyer)
    old = License.objects.get(order=order)
    first, reissued = value(LICENSES, kind="first"), value(LICENSES, kind="reissue")

    with django_capture_on_commit_callbacks(execute=True):
        new = license_reissue(license_id=old.pk, reason="buyer lost the key", actor=TEST_ACTOR)

    assert new.supersedes_id == old.pk
    assert value(LICENSES, kind="reissue") == reissued + 1
    assert value(LICENSES, kind="first") == first


class Rollback(Exception):
    pass


def test_a_license_issue_that_rolls_back_is_not_counted(
    buyer: Any, django_capture_on_commit_callbacks: Any
) -> None:
    order = order_paid(buyer)
    first = value(LICENSES, kind="first")

    def issue_then_fail() -> None:
        """The license is issued inside a caller's transaction, which then fails."""
        with transaction.atomic():
            assert license_issue(order_id=order.pk, actor=LICENSING_WORKER) is not None
            raise Rollback

    with django_capture_on_commit_callbacks(execute=True), pytest.raises(Rollback):
        issue_then_fail()

    assert not License.objects.filter(order=order).exists()
    assert value(LICENSES, kind="first") == first
    # The issue that does commit counts.
    with django_capture_on_commit_callbacks(execute=True):
        assert license_issue(order_id=order.pk, actor=LICENSING_WORKER) is not None
    assert value(LICENSES, kind="first") == first + 1


ENCRYPT_FAILURES = "marketplace_delivery_encrypt_failures_total"


@pytest.fixture
def pending_delivery(buyer: Any, settings: Any) -> Delivery:
    """A released, licensed order whose delivery waits to be packaged."""
    settings.DELIVERY_CHUNK_BYTES = 16 * 1024
    order = order_licensed(buyer, sku_licensed())
    return Delivery.objects.get(order=order)


def artifact_path(delivery: Delivery) -> str:
    return default_storage.path(delivery.order.sku.artifact.storage_key)


def test_packaging_a_changed_artifact_counts_an_artifact_failure(
    pending_delivery: Delivery,
) -> None:
    with open(artifact_path(pending_delivery), "r+b") as stored:
        stored.write(b"X")
    before = value(ENCRYPT_FAILURES, reason="artifact")

    assert delivery_package_task.apply(args=[str(pending_delivery.pk)]).get() == "suspended"

    assert value(ENCRYPT_FAILURES, reason="artifact") == before + 1


def test_each_transient_packaging_failure_counts_under_its_error_class(
    pending_delivery: Delivery, settings: Any
) -> None:
    settings.DELIVERY_MAX_ATTEMPTS = 2
    os.unlink(artifact_path(pending_delivery))
    before = value(ENCRYPT_FAILURES, reason="FileNotFoundError")

    # The task retries once (in this process: eager), then suspends the delivery.
    assert delivery_package_task.apply(args=[str(pending_delivery.pk)]).get() == "suspended"

    assert value(ENCRYPT_FAILURES, reason="FileNotFoundError") == before + 2
    pending_delivery.refresh_from_db()
    assert pending_delivery.attempts == 2


def test_a_data_key_that_no_longer_unwraps_counts_a_data_key_failure(
    pending_delivery: Delivery, settings: Any
) -> None:
    # A first attempt stores the wrapped data key, then fails on the artifact it cannot read.
    path = artifact_path(pending_delivery)
    os.rename(path, f"{path}.away")
    with pytest.raises(FileNotFoundError):
        delivery_package(delivery_id=pending_delivery.pk, actor=LICENSING_WORKER)
    os.rename(f"{path}.away", path)
    # The key store's master key is no longer the one that wrapped it.
    settings.KEYSTORE_MASTER_KEY = base64.b64encode(os.urandom(32)).decode()
    before = value(ENCRYPT_FAILURES, reason="data_key")

    assert delivery_package_task.apply(args=[str(pending_delivery.pk)]).get() == "suspended"

    assert value(ENCRYPT_FAILURES, reason="data_key") == before + 1


# --- orders ------------------------------------------------------------------------------------

CHECKOUT_LATENCY = "marketplace_checkout_latency_seconds"


def checkout(client: APIClient, slug: str, key: str | None) -> int:
    headers = {} if key is None else {"HTTP_IDEMPOTENCY_KEY": key}
    return client.post("/api/v1/checkout", data={"sku": slug}, format="json", **headers).status_code


@pytest.mark.parametrize(
    ("attempts", "outcome", "status"),
    [
        ([("sku", "k1")], "created", 201),
        ([("sku", "k1"), ("sku", "k1")], "replayed", 201),
        ([("no-such-sku", "k1")], "sku-not-found", 404),
        ([("sku", None)], "error", 400),
    ],
)
def test_each_checkout_answer_is_timed_under_its_outcome(
    buyer_client: APIClient, attempts: list[tuple[str, str | None]], outcome: str, status: int
) -> None:
    sku = sku_for_sale()
    *earlier, (slug, key) = [(sku.slug if s == "sku" else s, k) for s, k in attempts]
    for earlier_slug, earlier_key in earlier:
        checkout(buyer_client, earlier_slug, earlier_key)
    count = value(f"{CHECKOUT_LATENCY}_count", outcome=outcome)
    total = value(f"{CHECKOUT_LATENCY}_sum", outcome=outcome)

    assert checkout(buyer_client, slug, key) == status

    assert value(f"{CHECKOUT_LATENCY}_count", outcome=outcome) == count + 1
    assert value(f"{CHECKOUT_LATENCY}_sum", outcome=outcome) > total


WEBHOOK_FAILURES = "marketplace_stripe_webhook_failures_total"


def post_webhook(body: bytes, header: str) -> int:
    return (
        Client()
        .post(WEBHOOK_URL, data=body, content_type="application/json", HTTP_STRIPE_SIGNATURE=header)
        .status_code
    )


def test_a_webhook_with_a_bad_signature_is_counted_by_its_reason(buyer: Any) -> None:
    event = session_event("checkout.session.completed", order_checked_out(buyer, sku_for_sale()))
    body, header = signed(event, "whsec_not_the_configured_secret")
    before = value(WEBHOOK_FAILURES, reason="signature_invalid")

    assert post_webhook(body, header) == 400

    assert value(WEBHOOK_FAILURES, reason="signature_invalid") == before + 1
    assert not WebhookEvent.objects.exists()


def test_a_signed_webhook_body_that_is_not_an_event_is_counted() -> None:
    body, header = signed(b'["not", "an", "event"]', webhook_secrets()[0])
    before = value(WEBHOOK_FAILURES, reason="body_invalid")

    assert post_webhook(body, header) == 400

    assert value(WEBHOOK_FAILURES, reason="body_invalid") == before + 1


def test_a_webhook_event_whose_processing_fails_is_counted(buyer: Any) -> None:
    order = order_checked_out(buyer, sku_for_sale(price=1999))
    body, header = signed(
        session_event("checkout.session.completed", order, amount=1), webhook_secrets()[0]
    )
    assert post_webhook(body, header) == 200
    before = value(WEBHOOK_FAILURES, reason="processing_failed")

    assert webhook_event_process(event_pk=WebhookEvent.objects.get().pk) == "dead"

    assert value(WEBHOOK_FAILURES, reason="processing_failed") == before + 1


def test_orders_by_status_and_pending_postings_are_set_by_the_refresh_task(buyer: Any) -> None:
    sku = sku_for_sale()
    order_checked_out(buyer, sku, key="stays-pending")
    paid = order_checked_out(buyer, sku, key="gets-paid")
    body, header = signed(session_event("checkout.session.completed", paid), webhook_secrets()[0])
    assert post_webhook(body, header) == 200
    webhook_event_process(event_pk=WebhookEvent.objects.get().pk)
    # The ledger entry waits for Finance until it is sent (after the commit, by a worker).
    [posting] = FinancePosting.objects.filter(status=PostingStatus.PENDING)

    orders_metrics_refresh.apply().get()

    assert value("marketplace_orders", status=OrderStatus.PENDING) == 1
    assert value("marketplace_orders", status=OrderStatus.PAID) == 1
    assert value("marketplace_orders", status=OrderStatus.REFUNDED) == 0
    assert value("marketplace_finance_postings_pending") == 1

    finance_posting_send(posting_pk=posting.pk)
    orders_metrics_refresh.apply().get()

    assert value("marketplace_finance_postings_pending") == 0
    assert Order.objects.get(pk=paid.pk).delivery_state == "released"


# --- catalog -----------------------------------------------------------------------------------


def test_catalog_reads_count_a_miss_then_a_hit(api_client: APIClient) -> None:
    name = "marketplace_catalog_cache_requests_total"
    misses, hits = value(name, result="miss"), value(name, result="hit")

    assert api_client.get("/api/v1/skus").status_code == 200
    assert value(name, result="miss") == misses + 1
    assert value(name, result="hit") == hits

    assert api_client.get("/api/v1/skus").status_code == 200
    assert value(name, result="miss") == misses + 1
    assert value(name, result="hit") == hits + 1


# --- audit -------------------------------------------------------------------------------------


@pytest.fixture
def export_dir(settings: Any, tmp_path: Path) -> Path:
    settings.AUDIT_BUCKET = ""
    settings.AUDIT_EXPORT_DIR = tmp_path / "audit"
    return settings.AUDIT_EXPORT_DIR


def test_a_stored_daily_export_is_counted_as_a_success(export_dir: Path) -> None:
    successes = value("marketplace_audit_export_success_total")
    failures = value("marketplace_audit_export_failures_total")

    [export] = audit_exports_catch_up()

    assert export.day == timezone.now().astimezone(UTC).date() - timedelta(days=1)
    assert value("marketplace_audit_export_success_total") == successes + 1
    assert value("marketplace_audit_export_failures_total") == failures
    assert audit_exports_catch_up() == []  # a rerun stores nothing, and counts nothing
    assert value("marketplace_audit_export_success_total") == successes + 1


def test_a_daily_export_that_fails_is_counted_as_a_failure(export_dir: Path) -> None:
    day = timezone.now().astimezone(UTC).date() - timedelta(days=1)
    folder = export_dir / f"{day:%Y/%m/%d}"
    folder.mkdir(parents=True)
    (folder / f"audit-{day}.jsonl.gz").write_bytes(b"not the export")
    successes = value("marketplace_audit_export_success_total")
    failures = value("marketplace_audit_export_failures_total")

    with pytest.raises(ExportConflict):
        audit_exports_catch_up()

    assert value("marketplace_audit_export_failures_total") == failures + 1
    assert value("marketplace_audit_export_success_total") == successes


def appended(count: int) -> None:
    for index in range(count):
        with transaction.atomic():
            audit_append(
                actor=Actor.service("tests"),
                action="test.appended",
                subject=("thing", index),
                data={"index": index},
            )


@pytest.mark.postgres
def test_sealing_counts_the_events_observes_their_lag_and_measures_the_backlog() -> None:
    sealed = value("marketplace_audit_sealed_total")
    lags = value("marketplace_audit_seal_lag_seconds_count")
    appended(3)
    time.sleep(0.1)

    # Another sealer holds the lock: this run seals nothing and finds the backlog.
    with pg_connect() as holder:
        holder.execute("SELECT pg_advisory_xact_lock(%s)", [SEAL_LOCK])
        assert seal_pending().busy
        holder.rollback()
    assert value("marketplace_audit_unsealed_events") == 3
    assert value("marketplace_audit_unsealed_oldest_seconds") >= 0.1
    assert value("marketplace_audit_sealed_total") == sealed

    assert seal_all() == 3

    assert value("marketplace_audit_sealed_total") == sealed + 3
    assert value("marketplace_audit_seal_lag_seconds_count") == lags + 3
    assert value("marketplace_audit_unsealed_events") == 0
    assert value("marketplace_audit_unsealed_oldest_seconds") == 0


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_seal_batch_that_fails_is_counted_and_seals_nothing() -> None:
    """An event no sealer can encode (nested past Python's recursion limit), which only the
    tables' owner, with the insert trigger and its limits off, could write."""
    failures = value("marketplace_audit_seal_failures_total")
    sealed = value("marketplace_audit_sealed_total")
    deep = "[" * 5000 + "]" * 5000
    with pg_connect(owner=True) as owner:
        owner.execute("ALTER TABLE audit_event DISABLE TRIGGER audit_event_insert")
        try:
            owner.execute(
                "INSERT INTO audit_event (occurred_at, actor_type, actor_id, action, "
                "subject_type, subject_id, data) VALUES (now(), 'service', 'owner', 'x.deep', "
                "'t', '1', %s)",
                [f'{{"deep": {deep}}}'],
            )
        finally:
            owner.execute("ALTER TABLE audit_event ENABLE TRIGGER audit_event_insert")

    with pytest.raises(UnsealableEvent):
        seal_pending()

    assert value("marketplace_audit_seal_failures_total") == failures + 1
    assert value("marketplace_audit_sealed_total") == sealed
    assert value("marketplace_audit_unsealed_events") == 1


def test_the_unwitnessed_window_is_what_no_checkpoint_copy_holds_yet() -> None:
    appended(2)
    assert checkpoint_create() is not None  # its copy goes to the audit folder

    assert value("marketplace_audit_unwitnessed_events") == 0
    assert value("marketplace_audit_unwitnessed_seconds") == 0

    appended(1)
    time.sleep(0.1)
    assert unwitnessed_update()[0] == 1  # what each checkpoint run sets, read back

    assert value("marketplace_audit_unwitnessed_events") == 1
    assert value("marketplace_audit_unwitnessed_seconds") >= 0.1


@pytest.fixture
def kernel_events(kernel: KernelServer) -> KernelServer:
    """The Kernel stand-in, with three events it has not acknowledged yet."""
    appended(3)
    return kernel


def test_each_event_the_kernel_acknowledges_has_its_lag_observed(
    kernel_events: KernelServer,
) -> None:
    count = value("marketplace_audit_kernel_lag_seconds_count")

    assert kernel_push().acknowledged == 3

    assert value("marketplace_audit_kernel_lag_seconds_count") == count + 3
    assert value("marketplace_audit_kernel_backlog_events") == 0


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (server_error(503), "unavailable"),
        (json_reply(422, {"detail": "event 1's hash does not cover its record"}), "rejected"),
        (json_reply(409, {"acknowledged_through": 0}), "out_of_step"),
    ],
)
def test_a_failed_kernel_push_is_counted_by_reason_and_leaves_the_backlog(
    kernel_events: KernelServer, reply: Any, reason: str
) -> None:
    kernel_events.script(reply)
    failures = value("marketplace_audit_kernel_push_failures_total", reason=reason)
    lag = value("marketplace_audit_kernel_lag_seconds_count")

    with pytest.raises(KernelPushFailed):
        kernel_push()

    assert value("marketplace_audit_kernel_push_failures_total", reason=reason) == failures + 1
    assert value("marketplace_audit_kernel_backlog_events") == 3
    assert value("marketplace_audit_kernel_lag_seconds_count") == lag


# --- previews ----------------------------------------------------------------------------------


def test_open_previews_queue_and_capacity_are_set_by_the_sweep(
    buyer: Any, other_buyer: Any, settings: Any
) -> None:
    settings.PREVIEW_CAPACITY = 7
    preview_open(buyer=buyer, sku_slug=previewable_sku(MaterialKind.SAMPLE).slug)
    preview_open(buyer=other_buyer, sku_slug=previewable_sku(MaterialKind.SANDBOX).slug)

    previews_sweep()  # no worker: the sandbox's session waits, requested

    assert value("marketplace_preview_sessions_active", status="ready") == 1
    assert value("marketplace_preview_sessions_active", status="requested") == 1
    assert value("marketplace_preview_sessions_active", status="starting") == 0
    assert value("marketplace_preview_queue_depth") == 1
    assert value("marketplace_preview_capacity") == 7


def test_an_ended_preview_is_counted_by_its_reason_once_it_commits(
    buyer: Any, django_capture_on_commit_callbacks: Any
) -> None:
    opened = preview_open(buyer=buyer, sku_slug=previewable_sku(MaterialKind.SAMPLE).slug)
    name = "marketplace_preview_sessions_ended_total"
    ended, revoked = value(name, reason="ended"), value(name, reason="revoked")

    with django_capture_on_commit_callbacks(execute=True):
        preview_buyer_end(buyer=buyer, session_id=opened.session.pk)

    assert value(name, reason="ended") == ended + 1
    assert value(name, reason="revoked") == revoked


def test_an_expired_previews_teardown_lag_is_observed(
    buyer: Any, django_capture_on_commit_callbacks: Any
) -> None:
    opened = preview_open(buyer=buyer, sku_slug=previewable_sku(MaterialKind.SAMPLE).slug)
    PreviewSession.objects.filter(pk=opened.session.pk).update(
        created_at=timezone.now() - timedelta(minutes=20),
        expires_at=timezone.now() - timedelta(seconds=5),
    )
    count = value("marketplace_preview_teardown_lag_seconds_count")
    total = value("marketplace_preview_teardown_lag_seconds_sum")

    with django_capture_on_commit_callbacks(execute=True):
        assert preview_expire(session_id=opened.session.pk) == SessionStatus.TORN_DOWN

    assert value("marketplace_preview_teardown_lag_seconds_count") == count + 1
    assert 5 <= value("marketplace_preview_teardown_lag_seconds_sum") - total < 60


def test_a_sandbox_that_fails_to_start_observes_a_failed_start(
    buyer: Any, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    settings.PREVIEW_START_TIMEOUT_SECONDS = 2
    sku = previewable_sku(MaterialKind.SANDBOX)
    add_material(sku, command=["/usr/bin/false"])  # a command that exits at once
    opened = preview_open(buyer=buyer, sku_slug=sku.slug)
    name = "marketplace_preview_start_seconds_count"
    failed, ready = value(name, outcome="failed"), value(name, outcome="ready")

    with django_capture_on_commit_callbacks(execute=True):
        preview_start(session_id=opened.session.pk)

    assert value(name, outcome="failed") == failed + 1
    assert value(name, outcome="ready") == ready
    assert PreviewSession.objects.get(pk=opened.session.pk).end_reason == EndReason.FAILED


@pytest.mark.skipif(sandbox_available() is not None, reason=sandbox_available() or "")
def test_a_sandbox_no_session_owns_is_counted_as_leaked_by_the_collector(settings: Any) -> None:
    # The collector looks only at sandboxes whose socket is under this platform's folder.
    material = Path(tempfile.mkdtemp(prefix="mkp-leak-"))
    material.chmod(0o711)
    sockets = Path(settings.PREVIEW_DIR) / "sockets"
    sockets.mkdir(parents=True, exist_ok=True)
    sockets.chmod(0o711)
    socket_dir = sockets / "leaked0metrics0test"
    socket_dir.mkdir(mode=0o700)
    try:
        spec = SandboxSpec(
            material_dir=material,
            command=["/usr/bin/sleep", "30"],
            socket_dir=socket_dir,
            ttl_seconds=30,
        )
        leaked = Sandbox.start(spec, sandbox_id="leaked0metrics0test")
        count = value("marketplace_preview_leaked_sandboxes_total", provisioner="local")

        result = previews_gc()

        assert "leaked0metrics0test" in result.leaked_ids
        assert value("marketplace_preview_leaked_sandboxes_total", provisioner="local") == (
            count + result.leaked
        )
        leaked.process.wait(timeout=5)
    finally:
        shutil.rmtree(material, ignore_errors=True)
        shutil.rmtree(socket_dir, ignore_errors=True)
