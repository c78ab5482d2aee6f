"""Lag of the Kernel fan-out under load: from an audit event's append to the Kernel's
acknowledgement of it (issue item 6: p95 ≤ 3 s while the platform is under load).

    .venv/bin/python bench/audit/kernel_lag.py                  # from the repository root, ~80 s
    .venv/bin/python bench/audit/kernel_lag.py --rate 400 --duration 60

What runs, all on this machine:
- the stand-in Kernel (tests/support/kernel.py, with the test PKI of tests/support/pki.py): an
  HTTPS server requiring our client certificate, which checks each event's hash and link and
  notes when it acknowledged each one; it runs in this process, in threads;
- PostgreSQL: a fresh database `mkp_bench_lag` (dropped and created), migrated, with a few
  SKUs seeded through the catalog services (bench/catalog/seed.py) for the API to serve;
- Redis (database 5) as cache and Celery broker;
- a Celery worker (`celery -A config worker`, prefork, 2 processes, as in the Procfile);
- gunicorn serving the API (sync, 3 workers) and wrk hammering `GET /api/v1/skus` with 8
  connections (when wrk is installed; otherwise the run says it had no API load);
- WRITERS processes appending events through `audit.services.audit_append`, each in a short
  transaction of its own, RATE events/s in all, evenly paced. Each commit wakes the push the
  way production does (audit.fanout.kernel_push_soon → the push task on the worker).

The lag of an event is the Kernel's acknowledgement time minus the event's occurred_at (same
machine, same clock). Events of the first WARMUP seconds are left out. Prints p50, p95, p99
and max of the lag, the appends/s reached, the Kernel requests and their mean batch, and what
wrk measured. Exit 1 if an event never reached the Kernel, 3 with --strict if p95 > 3 s.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
LOGS = REPO / "var" / "bench" / "kernel-lag"
RESULTS_DIR = REPO / "bench" / "results"
QUEUE = "bench-kernel-lag"
ACTION = "bench.lag.appended"
TARGET_P95_SECONDS = 3.0
OWN_KEY_PREFIXES = (b"marketplace:", b"_kombu.", b"unacked", QUEUE.encode())

sys.path.insert(0, str(REPO))

WRITER = """
import os, sys, time, django
django.setup()
from django.db import transaction
from audit.services import audit_append
from marketplace.actors import Actor
name, action = sys.argv[1], sys.argv[5]
rate, seconds, start_at = float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
interval = 1.0 / rate
time.sleep(max(0.0, start_at - time.time()))
deadline, index, next_at = start_at + seconds, 0, start_at
# Paced, without bursts to catch up: a writer that falls behind appends as fast as it can, and
# stops at the deadline either way, so the run's length is fixed and the rate is measured.
while time.time() < deadline:
    with transaction.atomic():
        audit_append(actor=Actor.service(name), action=action, subject=("writer", name),
                     data={"index": index})
    index += 1
    next_at = max(next_at + interval, time.time())
    time.sleep(max(0.0, next_at - time.time()))
print(index)
"""


class BenchError(Exception):
    pass


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--postgres", default="postgres://postgres@127.0.0.1:5432", help="server, no database")
    add("--database", default="mkp_bench_lag", help="dropped and created")
    add("--redis", default="redis://127.0.0.1:6379", help="server, no database number")
    add("--redis-db", type=int, default=5)
    add("--writers", type=int, default=4, help="appending processes")
    add("--rate", type=float, default=200.0, help="events/s, all writers together")
    add("--duration", type=float, default=30.0, help="measured seconds")
    add("--warmup", type=float, default=5.0, help="seconds of appends left out of the figures")
    add("--skus", type=int, default=40, help="active SKUs for the API to list")
    add("--api-connections", type=int, default=8, help="wrk connections; 0: no API load")
    add("--gunicorn-workers", type=int, default=3)
    add("--worker-concurrency", type=int, default=2, help="Celery prefork processes")
    add("--strict", action="store_true", help="exit 3 if p95 exceeds 3 s")
    return parser.parse_args()


def environment(args: argparse.Namespace, kernel: object | None = None) -> dict[str, str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MARKETPLACE_") and k != "DJANGO_SETTINGS_MODULE"
    }
    redis_url = f"{args.redis.rstrip('/')}/{args.redis_db}"
    env = {
        **clean,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "PYTHONPATH": str(REPO),
        "MARKETPLACE_SERVICE_ENV": "dev",
        "MARKETPLACE_DATABASE_URL": f"{args.postgres.rstrip('/')}/{args.database}",
        "MARKETPLACE_REDIS_URL": redis_url,
        "MARKETPLACE_BROKER_URL": redis_url,
        "MARKETPLACE_CELERY_QUEUE": QUEUE,
        "MARKETPLACE_DATA_DIR": str(Path(tempfile.gettempdir()) / "marketplace-bench-kernel-lag"),
        "MARKETPLACE_THROTTLE_ANON": "100000/s",
        "MARKETPLACE_THROTTLE_USER": "100000/s",
        "MARKETPLACE_LOG_LEVEL": "WARNING",
    }
    if kernel is not None:
        pki = kernel.pki  # type: ignore[attr-defined]
        env.update(
            MARKETPLACE_KERNEL_URL=kernel.url,  # type: ignore[attr-defined]
            MARKETPLACE_KERNEL_CERT=str(pki.client.cert),
            MARKETPLACE_KERNEL_KEY=str(pki.client.key),
            MARKETPLACE_KERNEL_CA=str(pki.ca_cert),
        )
    return env


# --- Set-up ------------------------------------------------------------------------------------


def fresh_database(args: argparse.Namespace, env: dict[str, str]) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(f"{args.postgres.rstrip('/')}/postgres", autocommit=True) as conn:
        name = sql.Identifier(args.database)
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(name))
    python = sys.executable
    subprocess.run(
        [python, "manage.py", "migrate", "--noinput", "-v0"], cwd=REPO, env=env, check=True
    )
    if args.skus:
        subprocess.run(
            [python, "-m", "bench.catalog.seed", "--skus", str(args.skus)],
            cwd=REPO,
            env=env,
            check=True,
        )


def clean_redis(args: argparse.Namespace) -> None:
    import redis

    client = redis.Redis.from_url(f"{args.redis.rstrip('/')}/{args.redis_db}")
    keys = list(client.scan_iter(count=1000))
    foreign = [key for key in keys if not key.startswith(OWN_KEY_PREFIXES)]
    if foreign:
        raise BenchError(
            f"Redis database {args.redis_db} holds keys this bench did not write "
            f"(e.g. {foreign[0]!r}); pick a free one with --redis-db."
        )
    if keys:
        client.delete(*keys)


def start_kernel() -> object:
    from tests.support.kernel import KernelServer
    from tests.support.pki import kernel_pki_create

    folder = Path(tempfile.mkdtemp(prefix="bench-kernel-pki-"))
    server = KernelServer(kernel_pki_create(folder))
    server.start()
    return server


def start(name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    LOGS.mkdir(parents=True, exist_ok=True)
    with (LOGS / f"{name}.log").open("wb") as out:
        return subprocess.Popen(
            command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def wait_for(predicate: object, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise BenchError(f"{what} within {timeout:.0f} s (logs in {LOGS})")


def worker_ready() -> bool:
    return " ready." in (LOGS / "worker.log").read_text(errors="replace")


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
            return response.status == 200
    except OSError:
        return False


def free_port() -> int:
    from tests.support.net import free_port as port

    return port()


# --- Measuring ---------------------------------------------------------------------------------


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest rank."""
    if not sorted_values:
        return math.nan
    rank = max(math.ceil(p / 100 * len(sorted_values)), 1)
    return sorted_values[rank - 1]


def parse_wrk(output: str) -> dict[str, float]:
    def number(pattern: str) -> float:
        found = re.search(pattern, output)
        return float(found.group(1)) if found else math.nan

    def millis(label: str) -> float:
        found = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
        if not found:
            return math.nan
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[found.group(2)]
        return float(found.group(1)) * scale

    return {
        "requests_per_second": number(r"Requests/sec:\s+([\d.]+)"),
        "p50_ms": millis("50"),
        "p90_ms": millis("90"),
        "p99_ms": millis("99"),
        "non_2xx": number(r"Non-2xx or 3xx responses:\s+(\d+)") if "Non-2xx" in output else 0,
        "socket_errors": 1 if "Socket errors" in output else 0,
    }


def lags(args: argparse.Namespace, measured_from: float, acknowledged_at: dict[int, float]):
    import psycopg

    url = f"{args.postgres.rstrip('/')}/{args.database}"
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT sequence, occurred_at FROM audit_event WHERE action = %s ORDER BY sequence",
            (ACTION,),
        ).fetchall()
        head = conn.execute("SELECT coalesce(max(sequence), 0) FROM audit_event").fetchone()[0]
    measured = [(seq, at.timestamp()) for seq, at in rows if at.timestamp() >= measured_from]
    missing = [seq for seq, _ in measured if seq not in acknowledged_at]
    values = sorted(acknowledged_at[seq] - at for seq, at in measured if seq in acknowledged_at)
    return rows, measured, missing, values, head


def main() -> int:
    args = parse_args()
    wrk = shutil.which("wrk") if args.api_connections else None
    base_env = environment(args)
    print(f"database {args.database}: dropping, creating, migrating, seeding {args.skus} SKUs")
    fresh_database(args, base_env)
    clean_redis(args)
    kernel = start_kernel()
    env = environment(args, kernel)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        python = sys.executable
        worker = start(
            "worker",
            [python, "-m", "celery", "-A", "config", "worker", "-Q", QUEUE, "-n", f"{QUEUE}@%h",
             "--concurrency", str(args.worker_concurrency), "--without-gossip",
             "--without-mingle", "--loglevel", "INFO"],
            env,
        )  # fmt: skip
        processes.append(worker)
        wait_for(worker_ready, "the Celery worker did not start", 60)
        port = free_port()
        if wrk:
            gunicorn = start(
                "gunicorn",
                [python, "-m", "gunicorn", "config.wsgi:application", "--bind",
                 f"127.0.0.1:{port}", "--workers", str(args.gunicorn_workers),
                 "--log-level", "warning"],
                env,
            )  # fmt: skip
            processes.append(gunicorn)
            wait_for(lambda: answers(f"http://127.0.0.1:{port}/health"), "gunicorn not up", 60)

        seconds = args.warmup + args.duration
        start_at = time.time() + 6.0  # every writer has loaded Django by then, even under load
        measured_from = start_at + args.warmup
        wrk_output: list[str] = []
        wrk_thread = None
        if wrk:
            target = f"http://127.0.0.1:{port}/api/v1/skus?page_size=20"
            command = [wrk, "-t1", f"-c{args.api_connections}", f"-d{math.ceil(seconds)}s",
                       "--latency", target]  # fmt: skip

            def run_wrk() -> None:
                time.sleep(max(0.0, start_at - time.time()))
                done = subprocess.run(command, capture_output=True, text=True, check=False)
                wrk_output.append(done.stdout + done.stderr)

            wrk_thread = threading.Thread(target=run_wrk)
            wrk_thread.start()
        per_writer = args.rate / args.writers
        writers = [
            subprocess.Popen(
                [python, "-c", WRITER, f"w{n}", str(per_writer), str(seconds), str(start_at),
                 ACTION],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                text=True,
            )
            for n in range(args.writers)
        ]  # fmt: skip
        print(
            f"appending {args.rate:.0f} events/s from {args.writers} writers for "
            f"{seconds:.0f} s ({args.warmup:.0f} s warm-up), API load: "
            + (f"wrk, {args.api_connections} connections" if wrk else "none (no wrk on PATH)")
        )
        appended = sum(int((w.communicate()[0] or "0").strip() or 0) for w in writers)
        if any(w.returncode for w in writers):
            raise BenchError("a writer failed; see its output above")
        if wrk_thread is not None:
            wrk_thread.join()

        def caught_up() -> bool:
            _, _, missing, _, _ = lags(args, 0, kernel.audit_acknowledged_at)  # type: ignore[attr-defined]
            return not missing

        try:
            wait_for(caught_up, "the Kernel did not receive every event", 30)
        except BenchError as exc:
            print(f"FAILED: {exc}")
        acknowledged_at = kernel.audit_acknowledged_at  # type: ignore[attr-defined]
        rows, measured, missing, values, head = lags(args, measured_from, acknowledged_at)
        requests = kernel.audit_requests()  # type: ignore[attr-defined]
        held = len(kernel.audit_events)  # type: ignore[attr-defined]
    finally:
        for process in reversed(processes):
            stop(process)
        kernel.stop()  # type: ignore[attr-defined]

    batches = [len(r.body["events"]) for r in requests if isinstance(r.body, dict)]
    in_window = [at for _, at in measured]
    rate = len(in_window) / (max(in_window) - min(in_window)) if len(in_window) > 1 else math.nan
    report = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "options": vars(args),
        "appended": appended,
        "head": head,
        "kernel_holds": held,
        "measured_events": len(measured),
        "append_rate_per_second": rate,
        "kernel_requests": len(requests),
        "mean_batch": sum(batches) / len(batches) if batches else math.nan,
        "lag_seconds": {
            "p50": percentile(values, 50),
            "p95": percentile(values, 95),
            "p99": percentile(values, 99),
            "max": values[-1] if values else math.nan,
        },
        "missing": len(missing),
        "api": parse_wrk(wrk_output[0]) if wrk_output else None,
        # From the last append to the Kernel's last acknowledgement.
        "drain_seconds": (
            max(acknowledged_at.values()) - max(at.timestamp() for _, at in rows)
            if rows and acknowledged_at
            else math.nan
        ),
    }
    lag = report["lag_seconds"]
    print(
        f"\nappended {appended} events by the writers ({len(rows)} in the table), "
        f"{len(measured)} measured at {rate:.1f} events/s; chain head #{head}, the Kernel "
        f"holds {held}\nKernel requests: {len(requests)}, mean batch "
        f"{report['mean_batch']:.1f} events; the last ack came {report['drain_seconds']:.2f} s "
        f"after the last append\nlag append→ack (s): p50 {lag['p50']:.3f}  p95 {lag['p95']:.3f}  "
        f"p99 {lag['p99']:.3f}  max {lag['max']:.3f}"
    )
    if report["api"]:
        api = report["api"]
        print(
            f"API under load (wrk, {args.api_connections} connections): "
            f"{api['requests_per_second']:.0f} req/s, p50 {api['p50_ms']:.1f} ms, "
            f"p90 {api['p90_ms']:.1f} ms, p99 {api['p99_ms']:.1f} ms, "
            f"non-2xx {api['non_2xx']:.0f}"
        )
    passed = lag["p95"] <= TARGET_P95_SECONDS
    print(f"target p95 ≤ {TARGET_P95_SECONDS:.0f} s: {'PASS' if passed else 'FAIL'}")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    saved = RESULTS_DIR / f"kernel-lag-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    saved.write_text(json.dumps(report, indent=2, default=str))
    print(f"saved {saved.relative_to(REPO)}")
    if missing:
        return 1
    return 3 if args.strict and not passed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        sys.exit(1)
