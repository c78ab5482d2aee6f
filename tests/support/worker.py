"""A real Celery worker process, on the broker the tests run against, sharing the test
database, data folder, cache prefix and Kernel settings of the test process that starts it.
A test that uses the `kernel` fixture lists it before `celery_worker`, so that the worker is
started pointing at the stand-in Kernel.

`start_worker` starts workers on demand, with the settings as they are at that moment (a test
that needs a second worker, or one started later, or one it kills with SIGKILL); it stops
whatever is still running when the test ends."""

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

BASE_DIR = Path(__file__).resolve().parent.parent.parent


def _database_url() -> str:
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{db['USER']}{password}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}"


class WorkerProcess:
    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.output: list[str] = []
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)
            if " ready." in line:
                self._ready.set()

    def wait_ready(self, timeout: float = 60) -> None:
        if not self._ready.wait(timeout):
            raise TimeoutError("the worker did not start:\n" + "".join(self.output[-40:]))

    def log(self) -> str:
        return "".join(self.output)

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL, as the OOM killer or a lost host would: no shutdown, no ack, no clean-up."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=15)

    def stop(self) -> None:
        """A warm shutdown (SIGTERM): the task at hand is finished first."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def worker_start(settings: Any, *, name: str = "", purge: bool = True) -> WorkerProcess:
    """Starts a worker on the test process's queue and waits until it consumes.

    `name` tells several workers of one test apart (their node names must differ). With
    `purge=False` the worker also runs what was queued before it started, as a worker that
    comes back after an outage does."""
    queue = settings.CELERY_TASK_DEFAULT_QUEUE
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "MARKETPLACE_DATABASE_URL": _database_url(),
        "MARKETPLACE_TEST_DATA_DIR": str(settings.DATA_DIR),
        "MARKETPLACE_TEST_AUDIT_DIR": str(settings.AUDIT_EXPORT_DIR),
        "MARKETPLACE_TEST_CACHE_PREFIX": settings.CACHES["default"]["KEY_PREFIX"],
        "MARKETPLACE_CELERY_QUEUE": queue,
        # The Kernel the test points at (tests/support/kernel.py), or none.
        "MARKETPLACE_KERNEL_URL": settings.KERNEL_URL,
        "MARKETPLACE_KERNEL_CERT": settings.KERNEL_CERT,
        "MARKETPLACE_KERNEL_KEY": settings.KERNEL_KEY,
        "MARKETPLACE_KERNEL_CA": settings.KERNEL_CA,
        "MARKETPLACE_KERNEL_TIMEOUT_SECONDS": str(settings.KERNEL_TIMEOUT_SECONDS),
        # The payment provider and Finance the test points at (tests/support/stripe_api.py,
        # tests/support/finance_api.py), or the local ones.
        "MARKETPLACE_STRIPE_SECRET_KEY": settings.STRIPE_SECRET_KEY,
        "MARKETPLACE_STRIPE_API_BASE": settings.STRIPE_API_BASE,
        "MARKETPLACE_STRIPE_WEBHOOK_SECRET": ",".join(settings.STRIPE_WEBHOOK_SECRETS),
        "MARKETPLACE_FINANCE_URL": settings.FINANCE_URL,
        "MARKETPLACE_FINANCE_TOKEN": settings.FINANCE_TOKEN,
        "MARKETPLACE_SECRET_KEY": settings.SECRET_KEY,
        "MARKETPLACE_WEBHOOK_STRANDED_SECONDS": str(settings.WEBHOOK_STRANDED_SECONDS),
        "MARKETPLACE_WEBHOOK_MAX_ATTEMPTS": str(settings.WEBHOOK_MAX_ATTEMPTS),
        # Delivery packaging: the KMS key that makes data keys (tests/support/moto.py
        # `kms_key`), SSE-KMS on the bucket, attempts, retention, chunk size, heartbeat,
        # maintenance.
        "MARKETPLACE_DELIVERY_KMS_KEY_ID": settings.DELIVERY_KMS_KEY_ID,
        "MARKETPLACE_S3_KMS_KEY_ID": settings.S3_KMS_KEY_ID,
        "MARKETPLACE_KMS_ENDPOINT_URL": settings.KMS_ENDPOINT_URL,
        "MARKETPLACE_KMS_REGION": settings.KMS_REGION,
        "MARKETPLACE_DELIVERY_MAX_ATTEMPTS": str(settings.DELIVERY_MAX_ATTEMPTS),
        "MARKETPLACE_DELIVERY_RETENTION_DAYS": str(settings.DELIVERY_RETENTION_DAYS),
        "MARKETPLACE_DELIVERY_CHUNK_BYTES": str(settings.DELIVERY_CHUNK_BYTES),
        # How often a packaging attempt beats, and when a silent one counts as dead.
        "MARKETPLACE_DELIVERY_HEARTBEAT_SECONDS": str(settings.DELIVERY_HEARTBEAT_SECONDS),
        "MARKETPLACE_DELIVERY_STALE_SECONDS": str(settings.DELIVERY_STALE_SECONDS),
        "MAINTENANCE_MODE": "1" if settings.MAINTENANCE_MODE else "0",
        # Previews: the sandboxes' folder and limits, and the provisioner (a fake Kubernetes
        # API's address when a test points there).
        "MARKETPLACE_PREVIEW_DIR": str(settings.PREVIEW_DIR),
        "MARKETPLACE_PREVIEW_PROVISIONER": settings.PREVIEW_PROVISIONER,
        "MARKETPLACE_PREVIEW_START_TIMEOUT_SECONDS": str(settings.PREVIEW_START_TIMEOUT_SECONDS),
        "MARKETPLACE_PREVIEW_SANDBOX_MEMORY_BYTES": str(settings.PREVIEW_SANDBOX_MEMORY_BYTES),
        "MARKETPLACE_PREVIEW_SANDBOX_PROCESSES": str(settings.PREVIEW_SANDBOX_PROCESSES),
        "MARKETPLACE_PREVIEW_SANDBOX_CPU_SECONDS": str(settings.PREVIEW_SANDBOX_CPU_SECONDS),
        "MARKETPLACE_PREVIEW_SANDBOX_TMPFS_BYTES": str(settings.PREVIEW_SANDBOX_TMPFS_BYTES),
        "MARKETPLACE_PREVIEW_KUBE_API_URL": settings.PREVIEW_KUBE_API_URL,
    }
    storage = settings.STORAGES["default"]
    if storage["BACKEND"].endswith("FileSystemStorage"):
        env["MARKETPLACE_TEST_FILES_DIR"] = storage["OPTIONS"]["location"]
    else:  # the S3 server the test switched to
        env["MARKETPLACE_S3_BUCKET"] = storage["OPTIONS"]["bucket_name"]
        env["MARKETPLACE_S3_ENDPOINT_URL"] = storage["OPTIONS"]["endpoint_url"]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "config",
            "worker",
            "--pool=solo",
            "-Q",
            queue,
            "-n",
            f"{queue}{name}@%h",
            *(["--purge"] if purge else []),
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel=INFO",
        ],
        cwd=BASE_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    worker = WorkerProcess(process)
    try:
        worker.wait_ready()
    except BaseException:
        worker.stop()
        raise
    return worker


@pytest.fixture
def celery_worker(transactional_db: None, settings: Any) -> Iterator[WorkerProcess]:
    worker = worker_start(settings)
    try:
        yield worker
    finally:
        worker.stop()


@pytest.fixture
def start_worker(transactional_db: None, settings: Any) -> Iterator[Callable[..., WorkerProcess]]:
    """`start_worker(name="-2", purge=False)`: a worker started when the test says so."""
    started: list[WorkerProcess] = []

    def start(*, name: str = "", purge: bool = True) -> WorkerProcess:
        started.append(worker_start(settings, name=name, purge=purge))
        return started[-1]

    try:
        yield start
    finally:
        for worker in reversed(started):
            worker.stop()


def wait_until(predicate: Any, *, timeout: float = 30, worker: WorkerProcess | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    log = f"\nworker log:\n{worker.log()[-4000:]}" if worker else ""
    raise AssertionError(f"condition not met within {timeout}s{log}")
