"""Benchmark of checkout and Stripe's webhooks, against a floor, on the real processes.

    .venv/bin/python -m bench.checkout.run            # from the repository root, about 3 min

What runs, all on this machine:
- PostgreSQL: the database `mkp_bench_checkout` (dropped and created fresh, migrated), seeded
  through the services with one active SKU and BUYERS buyers holding an API token each
  (bench/checkout/seed.py);
- Redis (database 12 by default) as cache and Celery broker. Every key the run writes starts
  with a prefix of its own, `bench-checkout-<run id>:` (the cache's KEY_PREFIX and kombu's
  `global_keyprefix`: queue, bindings, unacked messages), and the run deletes those keys, and
  only those, when it ends; other keys in the database are never read or touched;
- the Stripe API stand-in (tests/support/stripe_api.py) as a process of its own, answering at
  once; the platform's real `stripe` client is pointed at it;
- gunicorn serving config.wsgi with the bench settings (bench/checkout/settings.py: the
  project's URLs plus the floor view, bench/checkout/views.py, routed nowhere else);
- wrk on loopback for the load (bench/checkout/checkout.lua, ingest.lua), and for the last part
  a Celery worker (prefork, 2 processes, as in the Procfile).

What it measures, in one run:
1. checkout: POST /api/v1/checkout (ours), POST /bench/floor/checkout (the floor: the same
   rows written, nothing else; see views.py) and POST /bench/floor-paid/checkout (that floor
   plus the call to the payment provider, which checkout cannot do without) at 16 and 64
   concurrent buyers, every request with a fresh Idempotency-Key; rounds alternate ours, floor,
   paid, paid, floor, ours so that drift on the machine falls on all; requests/s, p50, p95,
   p99, the ratios, and CPU per request by party;
2. webhook ingest: signed checkout.session.completed events POSTed to
   /marketplace/stripe/webhook by wrk with no worker running, so it is the ingest alone
   (verify, store once, queue the task); events/s and latency;
3. webhook to paid: with a worker running, completed events for pending orders posted at a
   steady rate; from the POST to the order's paid_at (set in the transaction that commits the
   payment) and to its ledger entry's acknowledgement (delivery released).

Targets of the issue: checkout at 16 concurrent buyers ≥ 0.8 x the floor's requests/s with a
p95 ≤ 100 ms; ingest ≥ 500 events/s.
Exit 1 on any failed request or a count that does not add up; --strict: exit 3 on a missed
target. The figures go to bench/results/checkout-*.json (git-ignored).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import math
import os
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
LOGS = REPO / "var" / "bench" / "checkout"
RESULTS_DIR = REPO / "bench" / "results"
QUEUE = "bench-checkout"
OURS_PATH = "/api/v1/checkout"
FLOOR_PATH = "/bench/floor/checkout"  # bench/checkout/urls.py
FLOOR_PAID_PATH = "/bench/floor-paid/checkout"
WEBHOOK_PATH = "/marketplace/stripe/webhook"
STAND_IN = REPO / "tests" / "support" / "stripe_api.py"
TARGET_CHECKOUT_RATIO = 0.8
TARGETS = ("ours", "floor", "paid")
TARGET_CHECKOUT_P95_MS = 100.0
TARGET_INGEST_PER_S = 500.0
# Every Redis key of a run starts with this and the run's id (bench/checkout/settings.py reads
# it): the cache's keys and kombu's (its global_keyprefix), so the run deletes exactly its own.
KEY_PREFIX_ENV = "BENCH_CHECKOUT_KEY_PREFIX"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

sys.path.insert(0, str(REPO))
from bench.procfs import backend_database  # noqa: E402 (needs the repository on the path)


class BenchError(Exception):
    pass


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--postgres", default="postgres://postgres@127.0.0.1:5432", help="server, no database")
    add("--database", default="mkp_bench_checkout", help="dropped and created")
    add("--redis", default="redis://127.0.0.1:6379", help="server, no database number")
    add("--redis-db", type=int, default=12, help="only keys this run writes are deleted")
    add("--buyers", type=int, default=64)
    add("--concurrency", type=int, nargs="+", default=[16, 64], help="concurrent buyers")
    add("--duration", type=float, default=5.0, help="seconds per measured round")
    add("--rounds", type=int, default=2, help="rounds per target and concurrency (ABBA)")
    add("--warmup", type=float, default=2.0, help="seconds per target before measuring")
    add("--workers", type=int, default=4, help="gunicorn sync workers")
    add("--ingest-connections", type=int, default=16)
    add("--ingest-duration", type=float, default=6.0)
    add("--ingest-pool-rate", type=int, default=2500, help="events signed per ingest second")
    add("--paid-events", type=int, default=200, help="events timed from POST to paid")
    add("--paid-rate", type=float, default=40.0, help="events/s posted for webhook-to-paid")
    add("--worker-concurrency", type=int, default=2)
    add("--strict", action="store_true", help="exit 3 when a target is missed")
    return parser.parse_args()


# --- Processes ---------------------------------------------------------------------------------


@dataclass
class Stack:
    args: argparse.Namespace
    env: dict[str, str]
    port: int
    stripe_port: int
    secret_key: str
    webhook_secret: str
    key_prefix: str
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def db_url(self) -> str:
        return self.env["MARKETPLACE_DATABASE_URL"]

    def start(self, name: str, command: list[str]) -> subprocess.Popen[bytes]:
        LOGS.mkdir(parents=True, exist_ok=True)
        with (LOGS / f"{name}.log").open("wb") as out:
            process = subprocess.Popen(
                command,
                cwd=REPO,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes[name] = process
        return process

    def stop(self, name: str) -> None:
        process = self.processes.pop(name, None)
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def stop_all(self) -> None:
        for name in reversed(list(self.processes)):
            self.stop(name)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def environment(
    args: argparse.Namespace, stripe_port: int, secret_key: str, whsec: str, key_prefix: str
) -> dict[str, str]:
    # An inherited MARKETPLACE_* variable would change what is measured: the bench sets every
    # one it depends on and drops the rest.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MARKETPLACE_") and k != "DJANGO_SETTINGS_MODULE"
    }
    redis_url = f"{args.redis.rstrip('/')}/{args.redis_db}"
    env.update(
        DJANGO_SETTINGS_MODULE="bench.checkout.settings",
        PYTHONPATH=str(REPO),
        **{KEY_PREFIX_ENV: key_prefix},
        MARKETPLACE_SERVICE_ENV="dev",
        MARKETPLACE_DATABASE_URL=f"{args.postgres.rstrip('/')}/{args.database}",
        MARKETPLACE_REDIS_URL=redis_url,
        MARKETPLACE_BROKER_URL=redis_url,
        MARKETPLACE_CELERY_QUEUE=QUEUE,
        MARKETPLACE_DATA_DIR=str(Path(tempfile.gettempdir()) / "marketplace-bench-checkout"),
        MARKETPLACE_ALLOWED_HOSTS="127.0.0.1,localhost",
        MARKETPLACE_STRIPE_SECRET_KEY=secret_key,
        MARKETPLACE_STRIPE_API_BASE=f"http://127.0.0.1:{stripe_port}",
        MARKETPLACE_STRIPE_WEBHOOK_SECRET=whsec,
        # Never reached: the bench measures the work, not the limits (bench/throttle does).
        MARKETPLACE_THROTTLE_ANON="100000/s",
        MARKETPLACE_THROTTLE_USER="100000/s",
        MARKETPLACE_THROTTLE_BUYER_WRITE="100000/s",
        MARKETPLACE_THROTTLE_CHECKOUT="100000/s",
        MARKETPLACE_THROTTLE_WEBHOOK="100000/s",
        MARKETPLACE_LOG_LEVEL="WARNING",
    )
    return env


def wait_for(predicate: Any, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise BenchError(f"{what} within {timeout:.0f} s (logs in {LOGS})")


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
            return response.status == 200
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def wait_for_stand_in() -> None:
    """The stand-in is written by another part of the project: wait for it rather than run
    without it."""
    deadline = time.monotonic() + 600
    while not STAND_IN.exists():
        if time.monotonic() > deadline:
            raise BenchError(f"{STAND_IN.relative_to(REPO)} did not appear")
        print(f"waiting for {STAND_IN.relative_to(REPO)} ...", flush=True)
        time.sleep(10)


def fresh_database(args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    import psycopg
    from psycopg import sql

    with psycopg.connect(f"{args.postgres.rstrip('/')}/postgres", autocommit=True) as conn:
        name = sql.Identifier(args.database)
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(name))
    python = sys.executable
    subprocess.run([python, "manage.py", "migrate", "--noinput", "-v0"], cwd=REPO, env=env,
                   check=True)  # fmt: skip
    done = subprocess.run(
        [python, "-m", "bench.checkout.seed", "--buyers", str(args.buyers)],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def redis_client(args: argparse.Namespace) -> Any:
    import redis

    return redis.Redis.from_url(f"{args.redis.rstrip('/')}/{args.redis_db}")


def own_keys(args: argparse.Namespace, key_prefix: str) -> list[bytes]:
    """The keys this run wrote: every one starts with its prefix."""
    pattern = key_prefix.replace("[", "\\[").replace("*", "\\*").replace("?", "\\?") + ":*"
    return list(redis_client(args).scan_iter(match=pattern, count=1000))


def own_keys_delete(args: argparse.Namespace, key_prefix: str) -> int:
    keys = own_keys(args, key_prefix)
    if keys:
        redis_client(args).delete(*keys)
    return len(keys)


def queue_purge(stack: Stack) -> int:
    """Drops the tasks ingest queued (nothing consumes them): the queue's list, prefixed as
    kombu writes it."""
    client = redis_client(stack.args)
    queue = f"{stack.key_prefix}:{QUEUE}"
    waiting = client.llen(queue)
    client.delete(queue)
    return waiting


def sql_one(stack: Stack, query: str, params: tuple = ()) -> Any:
    import psycopg

    with psycopg.connect(stack.db_url) as conn:
        return conn.execute(query, params).fetchone()


def sql_all(stack: Stack, query: str, params: tuple = ()) -> list[tuple]:
    import psycopg

    with psycopg.connect(stack.db_url) as conn:
        return conn.execute(query, params).fetchall()


# --- Where the CPU goes ------------------------------------------------------------------------


def _processes() -> dict[int, tuple[str, int, float]]:
    """pid -> (command name, parent pid, CPU seconds used so far). A PostgreSQL backend is
    named after its database (`postgres:<database>`, from its title), the server's own
    processes (WAL writer, checkpointer, ...) `postgres:`."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        if comm.startswith("postgres"):
            comm = f"postgres:{backend_database(entry)}"
        fields = stat.rsplit(")", 1)[1].split()
        found[int(entry.name)] = (
            comm,
            int(fields[1]),
            (int(fields[11]) + int(fields[12])) / CLOCK_TICKS,
        )
    return found  # fmt: skip


def _machine_busy() -> float:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


class CpuProbe:
    """CPU seconds of each party between two samples, read from /proc."""

    def __init__(self, stack: Stack) -> None:
        self.gunicorn = stack.processes["gunicorn"].pid
        self.stand_in = stack.processes["stripe"].pid
        self.database = stack.args.database

    def sample(self) -> tuple[float, dict[int, tuple[str, int, float]], float]:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return _machine_busy(), _processes(), children.ru_utime + children.ru_stime

    def party(self, pid: int, comm: str, ppid: int) -> str | None:
        if self.gunicorn in (pid, ppid):
            return "gunicorn"
        if pid == self.stand_in:
            return "stripe"
        # Backends of other databases are other jobs' ("others"); the server's own processes
        # (the WAL writer flushing commits, ...) work for every database and count here.
        if comm in (f"postgres:{self.database}", "postgres:"):
            return "postgres"
        if comm.startswith("redis-server"):
            return "redis"
        return None

    def used(self, before: Any, after: Any) -> dict[str, float]:
        used = {"gunicorn": 0.0, "postgres": 0.0, "redis": 0.0, "stripe": 0.0}
        for pid, (comm, ppid, cpu) in after[1].items():
            name = self.party(pid, comm, ppid)
            if name is not None:
                earlier = before[1].get(pid)
                used[name] += cpu - (earlier[2] if earlier and earlier[0] == comm else 0.0)
        used["wrk"] = after[2] - before[2]  # reaped children: wrk only
        used["machine"] = after[0] - before[0]
        # Processes that are no party to the bench (other jobs on a shared machine): a figure
        # taken while they took much of the cores is not comparable with a quiet run's.
        used["others"] = max(used["machine"] - sum(v for k, v in used.items() if k != "machine"), 0)
        return used


# --- wrk ---------------------------------------------------------------------------------------


@dataclass
class Round:
    target: str
    connections: int
    requests: int
    seconds: float
    histogram: list[tuple[int, int]]
    cpu: dict[str, float]


def percentile_ms(histogram: list[tuple[int, int]], p: float) -> float:
    merged: dict[int, int] = {}
    for value, count in histogram:
        merged[value] = merged.get(value, 0) + count
    wanted = p / 100 * sum(merged.values())
    seen = 0
    for value in sorted(merged):
        seen += merged[value]
        if seen >= wanted:
            return value / 1000
    return math.nan


def wrk(
    stack: Stack, probe: CpuProbe | None, script: str, connections: int, seconds: float,
    script_args: list[str], target: str,
) -> Round:  # fmt: skip
    command = [
        "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
        "-s", str(HERE / script), stack.base + "/", "--", *script_args,
    ]  # fmt: skip
    before = probe.sample() if probe else None
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    after = probe.sample() if probe else None
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH-JSON ")), None)
    if done.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stdout[-2000:]}{done.stderr}")
    report = json.loads(line.removeprefix("BENCH-JSON "))
    errors = {name: n for name, n in report["errors"].items() if n}
    if errors:
        raise BenchError(f"{target} at {connections}: {errors} of {report['requests']} requests")
    return Round(
        target=target,
        connections=connections,
        requests=report["requests"],
        seconds=report["duration_us"] / 1e6,
        histogram=[tuple(pair) for pair in report["histogram"]],
        cpu=probe.used(before, after) if probe else {},
    )


@dataclass
class Summary:
    requests: int
    rps: float
    p50: float
    p95: float
    p99: float
    cpu_ms_per_request: dict[str, float]


def summarize(rounds: list[Round]) -> Summary:
    histogram = [pair for r in rounds for pair in r.histogram]
    requests = sum(r.requests for r in rounds)
    seconds = sum(r.seconds for r in rounds)
    cpu: dict[str, float] = {}
    for r in rounds:
        for name, value in r.cpu.items():
            cpu[name] = cpu.get(name, 0.0) + value
    return Summary(
        requests=requests,
        rps=requests / seconds,
        p50=percentile_ms(histogram, 50),
        p95=percentile_ms(histogram, 95),
        p99=percentile_ms(histogram, 99),
        cpu_ms_per_request={k: 1000 * v / requests for k, v in cpu.items()},
    )


# --- 1. Checkout -------------------------------------------------------------------------------


def check_checkout(stack: Stack, path: str, token: str, sku: str) -> dict[str, Any]:
    """One request of each kind answers 201 with an order, before any load."""
    request = urllib.request.Request(  # noqa: S310 - loopback
        stack.base + path,
        data=json.dumps({"sku": sku}).encode(),
        headers={
            "Authorization": f"Bearer {token}",
            "Idempotency-Key": f"check-{uuid.uuid4()}",
            "Content-Type": "application/json",
        },
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            status, body = response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise BenchError(f"POST {path} answered {exc.code}: {exc.read()[:500]!r}") from None
    if status != 201 or body["order"]["status"] != "pending":
        raise BenchError(f"POST {path} answered {status}: {body}")
    return body


def orders_of(stack: Stack, gateway: str) -> int:
    return sql_one(stack, "SELECT count(*) FROM orders_order WHERE gateway = %s", (gateway,))[0]


def settle(stack: Stack, gateway: str) -> int:
    """Waits until gunicorn has finished what wrk left behind (requests accepted before wrk
    stopped are still served), so that no round pays for the one before it. Answers the
    count of orders then."""
    count = orders_of(stack, gateway)
    while True:
        time.sleep(0.3)
        now = orders_of(stack, gateway)
        if now == count:
            return now
        count = now


def measure_checkout(
    stack: Stack, probe: CpuProbe, tokens_file: Path, sku: str
) -> dict[int, dict[str, Summary]]:
    args = stack.args
    paths = {
        "ours": (OURS_PATH, "stripe"),
        "floor": (FLOOR_PATH, "floor"),
        "paid": (FLOOR_PAID_PATH, "floor-paid"),
    }
    results: dict[int, dict[str, Summary]] = {}
    run_id = uuid.uuid4().hex[:8]
    for connections in args.concurrency:
        rounds: dict[str, list[Round]] = {target: [] for target in TARGETS}
        for target in TARGETS:  # warm-up, not counted
            path, gateway = paths[target]
            warm_args = [path, f"{run_id}-warm-{target}-{connections}", str(tokens_file), sku]
            wrk(stack, None, "checkout.lua", connections, args.warmup, warm_args, target)
            settle(stack, gateway)
        order = [*TARGETS, *reversed(TARGETS)] * math.ceil(args.rounds / 2)
        for index, target in enumerate(order[: len(TARGETS) * args.rounds]):
            path, gateway = paths[target]
            before = orders_of(stack, gateway)
            measured = wrk(stack, probe, "checkout.lua", connections, args.duration,
                           [path, f"{run_id}-{index}-{connections}", str(tokens_file), sku],
                           target)  # fmt: skip
            created = settle(stack, gateway) - before
            # wrk counts the replies it read; a request still in flight when it stopped (one per
            # connection at most) may have written an order too.
            if not measured.requests <= created <= measured.requests + connections:
                raise BenchError(
                    f"{target} at {connections}: {measured.requests} replies but {created} "
                    "orders created"
                )
            rounds[target].append(measured)
        results[connections] = {t: summarize(r) for t, r in rounds.items()}
        print(
            f"  {connections:>3} buyers  "
            + " | ".join(
                f"{target} {s.rps:7.1f} req/s p50 {s.p50:6.1f} p95 {s.p95:6.1f} ms"
                for target, s in results[connections].items()
            ),
            flush=True,
        )
    return results


# --- 2. Webhook ingest -------------------------------------------------------------------------


def signature(payload: bytes, secret: str, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def completed_event(order: Any) -> bytes:
    """A checkout.session.completed event for `order`, as Stripe sends it (built from Stripe's
    example objects by the tests' builder)."""
    from tests.orders.stripe_events import session_event

    return json.dumps(session_event("checkout.session.completed", order)).encode()


def measure_ingest(stack: Stack, probe: CpuProbe) -> dict[str, Any]:
    args = stack.args
    pool = int(args.ingest_pool_rate * args.ingest_duration)
    now = int(time.time())
    events_file = LOGS / "ingest-events.txt"
    # Orders that do not exist: ingest does not look at them, and nothing processes these.
    with events_file.open("w") as out:
        for _ in range(pool):
            order = SimpleNamespace(
                id=uuid.uuid4(), checkout_session_id=f"cs_test_{secrets.token_hex(24)}",
                sku_slug="bench", amount=2999, currency="EUR", payment_intent_id="",
            )  # fmt: skip
            body = completed_event(order)
            out.write(f"{signature(body, stack.webhook_secret, now)}\t{body.decode()}\n")
    before = sql_one(stack, "SELECT count(*) FROM orders_webhookevent")[0]
    measured = wrk(stack, probe, "ingest.lua", args.ingest_connections, args.ingest_duration,
                   [WEBHOOK_PATH, str(events_file)], "ingest")  # fmt: skip
    stored = sql_one(stack, "SELECT count(*) FROM orders_webhookevent")[0] - before
    queued = queue_purge(stack)
    # Nothing is to process these events (their orders do not exist): marked as handed out, a
    # dispatch in part 3 leaves them alone, as the purged tasks would have.
    sql_one(stack, "UPDATE orders_webhookevent SET dispatched_at = now() "
                   "WHERE dispatched_at IS NULL RETURNING 1")  # fmt: skip
    if measured.requests > pool:
        raise BenchError(
            f"ingest: {measured.requests} requests for a pool of {pool} events; raise "
            "--ingest-pool-rate"
        )
    if not measured.requests <= stored <= measured.requests + args.ingest_connections:
        raise BenchError(f"ingest: {measured.requests} replies but {stored} events stored")
    summary = summarize([measured])
    return {"summary": summary, "stored": stored, "queued_tasks": queued, "pool": pool}


# --- 3. Webhook to paid ------------------------------------------------------------------------


def measure_paid(stack: Stack) -> dict[str, Any]:
    import requests

    args = stack.args
    rows = sql_all(
        stack,
        "SELECT id, checkout_session_id, sku_slug, amount, currency FROM orders_order "
        "WHERE gateway = 'stripe' AND status = 'pending' ORDER BY created_at LIMIT %s",
        (args.paid_events,),
    )
    if len(rows) < args.paid_events:
        raise BenchError(f"only {len(rows)} pending orders for {args.paid_events} events")
    python = sys.executable
    stack.start("worker", [python, "-m", "celery", "-A", "config", "worker", "-Q", QUEUE,
                           "-n", f"{QUEUE}@%h", "--concurrency", str(args.worker_concurrency),
                           "--purge", "--without-gossip", "--without-mingle",
                           "--loglevel", "INFO"])  # fmt: skip
    wait_for(lambda: " ready." in (LOGS / "worker.log").read_text(errors="replace"),
             "the Celery worker did not start", 60)  # fmt: skip

    events = []
    for order_id, session_id, slug, amount, currency in rows:
        order = SimpleNamespace(id=order_id, checkout_session_id=session_id, sku_slug=slug,
                                amount=amount, currency=currency, payment_intent_id="")  # fmt: skip
        events.append((str(order_id), completed_event(order)))
    sent_at: dict[str, float] = {}
    local = threading.local()

    def post(item: tuple[int, tuple[str, bytes]]) -> None:
        index, (order_id, body) = item
        time.sleep(max(0.0, start + index / args.paid_rate - time.time()))
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        sent_at[order_id] = time.time()
        reply = session.post(
            stack.base + WEBHOOK_PATH,
            data=body,
            headers={"Stripe-Signature": signature(body, stack.webhook_secret, int(time.time())),
                     "Content-Type": "application/json"},
            timeout=10,
        )  # fmt: skip
        if reply.status_code != 200:
            raise BenchError(f"webhook answered {reply.status_code}: {reply.text[:300]}")

    start = time.time() + 0.5
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(post, enumerate(events)))
    ids = tuple(order_id for order_id, _ in events)

    def settled() -> bool:
        return sql_one(
            stack,
            "SELECT count(*) FROM orders_order WHERE id::text = ANY(%s) AND status = 'paid' "
            "AND NOT finance_pending",
            (list(ids),),
        )[0] == len(ids)

    wait_for(settled, "not every order was paid and released", 120)
    timing = sql_all(
        stack,
        "SELECT o.id::text, extract(epoch FROM o.paid_at), extract(epoch FROM p.posted_at) "
        "FROM orders_order o JOIN orders_financeposting p ON p.order_id = o.id "
        "WHERE o.id::text = ANY(%s) AND p.kind = 'sale'",
        (list(ids),),
    )
    stack.stop("worker")
    to_paid = sorted(float(paid) - sent_at[order_id] for order_id, paid, _ in timing)
    to_released = sorted(float(posted) - sent_at[order_id] for order_id, _, posted in timing)

    def pct(values: list[float], p: float) -> float:
        return 1000 * values[max(math.ceil(p / 100 * len(values)), 1) - 1]

    return {
        "events": len(ids),
        "rate": args.paid_rate,
        "to_paid_ms": {"p50": pct(to_paid, 50), "p95": pct(to_paid, 95), "max": pct(to_paid, 100)},
        "to_released_ms": {
            "p50": pct(to_released, 50),
            "p95": pct(to_released, 95),
            "max": pct(to_released, 100),
        },
    }


# --- Report ------------------------------------------------------------------------------------


def print_report(checkout: dict[int, dict[str, Summary]], ingest: dict, paid: dict) -> dict:
    print(
        "\ncheckout (POST, fresh Idempotency-Key each; ms; floor: the same rows, no provider "
        "call; paid: the floor plus the provider's call; ratio = ours / each)"
    )
    print(f"{'buyers':>6} {'target':>6} {'req/s':>8} {'p50':>7} {'p95':>7} {'p99':>7}   "
          "CPU ms per request: gunicorn postgres redis stripe wrk | others machine")  # fmt: skip
    passed: dict[str, bool] = {}
    for connections, by_target in checkout.items():
        for target in TARGETS:
            s = by_target[target]
            cpu = s.cpu_ms_per_request
            print(
                f"{connections:>6} {target:>6} {s.rps:8.1f} {s.p50:7.1f} {s.p95:7.1f} "
                f"{s.p99:7.1f}   {cpu['gunicorn']:8.2f} {cpu['postgres']:8.2f} "
                f"{cpu['redis']:5.2f} {cpu['stripe']:6.2f} {cpu['wrk']:4.2f} | "
                f"{cpu['others']:6.2f} {cpu['machine']:7.2f}"
            )
        ours = by_target["ours"]
        for floor_name in ("floor", "paid"):
            floor = by_target[floor_name]
            print(
                f"{connections:>6} {'÷' + floor_name:>6} {ours.rps / floor.rps:8.2f} "
                f"{ours.p50 / floor.p50:7.2f} {ours.p95 / floor.p95:7.2f} "
                f"{ours.p99 / floor.p99:7.2f}"
            )
    if 16 in checkout:
        ours, floor = checkout[16]["ours"], checkout[16]["floor"]
        passed[f"checkout ≥ {TARGET_CHECKOUT_RATIO} x the floor's req/s at 16 buyers"] = (
            ours.rps >= TARGET_CHECKOUT_RATIO * floor.rps
        )
        passed[f"checkout p95 ≤ {TARGET_CHECKOUT_P95_MS:.0f} ms at 16 buyers"] = (
            ours.p95 <= TARGET_CHECKOUT_P95_MS
        )
    s = ingest["summary"]
    print(
        f"\nwebhook ingest (no worker; {stack_args.ingest_connections} connections): "
        f"{s.rps:.1f} events/s, p50 {s.p50:.1f} ms, p95 {s.p95:.1f} ms, p99 {s.p99:.1f} ms; "
        f"CPU ms per event: gunicorn {s.cpu_ms_per_request['gunicorn']:.2f}, postgres "
        f"{s.cpu_ms_per_request['postgres']:.2f}, redis {s.cpu_ms_per_request['redis']:.2f}; "
        f"{ingest['stored']} stored"
    )  # fmt: skip
    passed[f"ingest ≥ {TARGET_INGEST_PER_S:.0f} events/s"] = s.rps >= TARGET_INGEST_PER_S
    print(
        f"\nwebhook to paid ({paid['events']} events at {paid['rate']:.0f}/s, worker prefork "
        f"{stack_args.worker_concurrency}): to paid p50 {paid['to_paid_ms']['p50']:.0f} ms, "
        f"p95 {paid['to_paid_ms']['p95']:.0f} ms, max {paid['to_paid_ms']['max']:.0f} ms; to "
        f"released (ledger acknowledged) p50 {paid['to_released_ms']['p50']:.0f} ms, p95 "
        f"{paid['to_released_ms']['p95']:.0f} ms"
    )  # fmt: skip
    print()
    for name, ok in passed.items():
        print(f"target {name}: {'PASS' if ok else 'FAIL'}")
    return passed


stack_args: argparse.Namespace


def main() -> int:
    global stack_args
    args = stack_args = parse_args()
    if shutil.which("wrk") is None:
        raise BenchError("wrk is not on PATH: apt-get install -y wrk")
    wait_for_stand_in()
    secret_key = f"sk_test_bench_{secrets.token_hex(8)}"
    webhook_secret = f"whsec_bench_{secrets.token_hex(16)}"
    stripe_port, port = free_port(), free_port()
    key_prefix = f"bench-checkout-{secrets.token_hex(4)}"
    env = environment(args, stripe_port, secret_key, webhook_secret, key_prefix)
    stack = Stack(args, env, port, stripe_port, secret_key, webhook_secret, key_prefix)
    started = time.monotonic()
    python = sys.executable
    try:
        print(f"database {args.database}: dropping, creating, migrating, seeding; Redis "
              f"database {args.redis_db}, keys {key_prefix}:*", flush=True)  # fmt: skip
        seeded = fresh_database(args, env)
        LOGS.mkdir(parents=True, exist_ok=True)
        tokens_file = LOGS / "tokens.txt"
        tokens_file.write_text("\n".join(seeded["tokens"]) + "\n")
        stack.start("stripe", [python, "-m", "tests.support.stripe_api", "--port",
                               str(stripe_port), "--secret-key", secret_key,
                               "--webhook-secret", webhook_secret])  # fmt: skip
        stack.start("gunicorn", [python, "-m", "gunicorn", "config.wsgi:application",
                                 "--bind", f"127.0.0.1:{port}", "--workers", str(args.workers),
                                 "--log-level", "warning"])  # fmt: skip
        wait_for(lambda: answers(f"http://127.0.0.1:{stripe_port}/v1/x"), "no stand-in", 30)
        wait_for(lambda: answers(f"{stack.base}/health"), "gunicorn did not answer", 60)
        check_checkout(stack, OURS_PATH, seeded["tokens"][0], seeded["sku"])
        check_checkout(stack, FLOOR_PATH, seeded["tokens"][0], seeded["sku"])
        check_checkout(stack, FLOOR_PAID_PATH, seeded["tokens"][0], seeded["sku"])
        probe = CpuProbe(stack)
        print(f"set up in {time.monotonic() - started:.0f} s; checkout:", flush=True)
        checkout = measure_checkout(stack, probe, tokens_file, seeded["sku"])
        print("webhook ingest ...", flush=True)
        ingest = measure_ingest(stack, probe)
        print("webhook to paid ...", flush=True)
        paid = measure_paid(stack)
    finally:
        stack.stop_all()
        deleted = own_keys_delete(args, key_prefix)
        print(f"deleted the run's {deleted} Redis keys ({key_prefix}:*)", flush=True)
    passed = print_report(checkout, ingest, paid)
    report = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "options": vars(args),
        "checkout": {str(c): {t: vars(s) for t, s in by.items()} for c, by in checkout.items()},
        "ingest": {**ingest, "summary": vars(ingest["summary"])},
        "webhook_to_paid": paid,
        "targets": passed,
        "seconds": time.monotonic() - started,
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    saved = RESULTS_DIR / f"checkout-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    saved.write_text(json.dumps(report, indent=2, default=str))
    print(f"run took {report['seconds']:.0f} s; saved {saved.relative_to(REPO)}")
    return 3 if args.strict and not all(passed.values()) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        sys.exit(1)
