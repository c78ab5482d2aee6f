"""Benchmark of the public SKU list against a plain-Django floor, side by side.

    .venv/bin/python bench/catalog/run.py            # from the repository root

What it does, in order:
1. creates the PostgreSQL database `marketplace_bench` if missing and migrates it;
2. seeds it to 200 active SKUs through the catalog services (bench/catalog/seed.py);
3. starts gunicorn on a free loopback port with DJANGO_SETTINGS_MODULE=bench.catalog.settings,
   which serves the project's URLs plus the floor (bench/catalog/views.py), on a Redis
   database and cache key prefix of its own; waits for GET /health;
4. checks once that both targets answer 200 with the same 50 SKUs in the same order;
5. warms both up, then measures them in alternating rounds (ours, floor, floor, ours, ...) so
   that drift on the machine falls on both equally;
6. prints requests/s, p50, p95 and p99 of each, the ratios, the issue's targets, and where
   the CPU went; writes the figures to bench/results/ (git-ignored); stops gunicorn.

It exits 1 if any response was not 2xx, any socket error occurred or any reply was not the
checked page; with --strict it also exits 3 when a target is missed.

Load generator: wrk (Debian package `wrk`: `apt-get install -y wrk`; the runner stops with
that hint if it is missing). The machine has two cores shared by gunicorn, PostgreSQL, Redis
and the client, so the client must cost as little CPU per request as possible: wrk is one C
thread on epoll and takes about 0.1 ms of CPU per request, where a Python client with 16
threads would take most of a core and add its own GIL waits to the latencies. The runner
reports the client's CPU so this stays checked. Only wrk's done() hook is scripted
(bench/catalog/report.lua): it hands back the whole latency histogram, so the rounds of a
target are merged into one distribution before percentiles are taken. Those are wrk's
latencies, which include its coordinated-omission correction (for each reply slower than
twice the mean interval, synthetic samples between the two); the runner prints how many
samples that added, and it applies to both targets alike.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
RESULTS_DIR = REPO / "bench" / "results"
LUA_REPORT = HERE / "report.lua"
DEFAULT_SETTINGS = "bench.catalog.settings"

OURS = "ours"
FLOOR = "floor"
OURS_PATH = "/api/v1/skus"
FLOOR_PATH = "/bench/floor/skus"  # bench/catalog/urls.py

TARGET_RPS_RATIO = 0.6
TARGET_P95_MS = 25.0

# Keys the bench writes in its Redis database: the cache (KEY_PREFIX of the bench settings)
# and the Celery broker's bindings and queue of the same name.
OWN_KEY_PREFIXES = (b"marketplace-bench", b"_kombu.", b"unacked")
GENERATION_KEY = b"marketplace-bench:1:catalog:generation"  # catalog.cache.GENERATION_KEY

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    pass


# --- Configuration -----------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="GET /api/v1/skus against a plain-Django floor, on gunicorn, PostgreSQL "
        "and Redis, with wrk on loopback.",
    )
    add = parser.add_argument
    add("--postgres", default="postgres://postgres@127.0.0.1:5432", help="server, no database")
    add("--database", default="marketplace_bench", help="created if missing")
    add("--redis", default="redis://127.0.0.1:6379", help="server, no database number")
    add("--redis-db", type=int, default=13, help="Redis database for cache and broker")
    add("--skus", type=int, default=200, help="active SKUs to seed (at least)")
    add("--page-size", type=int, default=50)
    add("--connections", type=int, default=16, help="concurrent clients")
    add("--duration", type=int, default=10, help="seconds per measured round and target")
    add("--rounds", type=int, default=3, help="measured rounds per target")
    add("--warmup", type=int, default=5, help="seconds of warm-up per target")
    # Sync workers, four on two cores: more processes than cores, so that a core is not idle
    # while a worker waits on Redis or PostgreSQL, and no GIL shared between threads. On this
    # machine sync had the lowest CPU per request and by far the tightest tail (README.md):
    # each request goes to whichever worker is free, through the kernel's shared accept
    # queue, whereas gthread keeps a keep-alive connection on the worker that accepted it, so
    # 16 connections split unevenly and the busiest worker's queue sets the p95 (gthread 2x4:
    # p95 54 ms where sync 4 had 30 ms, in the same conditions).
    add("--worker-class", default="sync", choices=["sync", "gthread"])
    add("--workers", type=int, default=4)
    add("--threads", type=int, default=4, help="per worker, gthread only")
    # 100000/s never throttles, and its one-second window keeps DRF's history of the single
    # loopback client at about one second of requests, near what production's 1200/min cap
    # lets a heavy client build. A per-minute rate would grow that history to a minute of
    # requests (tens of thousands of timestamps, pickled to Redis and back on each request):
    # a cost no real client can cause, since 1200/min throttles it long before.
    add("--throttle-anon", default="100000/s")
    # DRF's UserRateThrottle also counts anonymous requests, by client address, in a history
    # of its own (2400/min by default): left as it is, it throttles the bench within a minute.
    add("--throttle-user", default="100000/s")
    add(
        "--cache-seconds",
        type=int,
        default=3600,
        help="catalog cache TTL, longer than the run; 0 turns the cache off, so every request "
        "of ours builds its page (the cold path)",
    )
    add(
        "--settings",
        default=DEFAULT_SETTINGS,
        help="settings module, to measure a variant of the project; it must keep the URLs and "
        "cache key prefix of bench.catalog.settings (PYTHONPATH is passed on)",
    )
    add("--data-dir", default=str(REPO / "var" / "bench"), help="MARKETPLACE_DATA_DIR")
    add("--no-seed", action="store_true", help="skip migrate and seed")
    add("--no-save", action="store_true", help="do not write bench/results/*.json")
    add("--strict", action="store_true", help="exit 3 when a target is missed")
    return parser.parse_args()


def bench_env(args: argparse.Namespace) -> dict[str, str]:
    # An inherited MARKETPLACE_* variable (MARKETPLACE_DEBUG=1, say) would change what is
    # measured: the bench sets every one it depends on and drops the rest.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MARKETPLACE_") and k != "DJANGO_SETTINGS_MODULE"
    }
    redis_url = f"{args.redis.rstrip('/')}/{args.redis_db}"
    env.update(
        DJANGO_SETTINGS_MODULE=args.settings,
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        MARKETPLACE_SERVICE_ENV="dev",
        MARKETPLACE_DATABASE_URL=f"{args.postgres.rstrip('/')}/{args.database}",
        MARKETPLACE_REDIS_URL=redis_url,
        MARKETPLACE_BROKER_URL=redis_url,
        MARKETPLACE_CELERY_QUEUE="marketplace-bench",
        MARKETPLACE_DATA_DIR=args.data_dir,
        MARKETPLACE_THROTTLE_ANON=args.throttle_anon,
        MARKETPLACE_THROTTLE_USER=args.throttle_user,
        MARKETPLACE_ALLOWED_HOSTS="127.0.0.1,localhost",
        MARKETPLACE_CATALOG_CACHE_SECONDS=str(args.cache_seconds),
        MARKETPLACE_LOG_LEVEL="WARNING",
    )
    return env


# --- Set-up: database, Redis, seed -------------------------------------------------------------


def ensure_database(args: argparse.Namespace) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(f"{args.postgres.rstrip('/')}/postgres", autocommit=True) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (args.database,))
        if found.fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(args.database)))
            print(f"created database {args.database}")


def redis_client(args: argparse.Namespace) -> Any:
    import redis

    return redis.Redis.from_url(f"{args.redis.rstrip('/')}/{args.redis_db}")


def check_redis_db_is_ours(args: argparse.Namespace) -> None:
    client = redis_client(args)
    foreign = [k for k in client.scan_iter(count=1000) if not k.startswith(OWN_KEY_PREFIXES)]
    if foreign:
        raise BenchError(
            f"Redis database {args.redis_db} holds keys the bench did not write "
            f"(e.g. {foreign[0]!r}); pick a free one with --redis-db."
        )


def migrate_and_seed(env: dict[str, str], skus: int) -> None:
    python = sys.executable
    subprocess.run([python, "manage.py", "migrate", "--noinput", "-v", "0"], env=env, check=True)
    subprocess.run([python, "-m", "bench.catalog.seed", "--skus", str(skus)], env=env, check=True)


def active_skus(env: dict[str, str]) -> int:
    import psycopg

    with psycopg.connect(env["MARKETPLACE_DATABASE_URL"]) as conn:
        row = conn.execute("SELECT count(*) FROM catalog_sku WHERE status = 'active'").fetchone()
    return row[0]


# --- gunicorn ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_gunicorn(
    args: argparse.Namespace, env: dict[str, str], port: int, log: Path
) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "gunicorn", "config.wsgi:application",
        "--bind", f"127.0.0.1:{port}",
        "--worker-class", args.worker_class,
        "--workers", str(args.workers),
        "--log-level", "warning",
    ]  # fmt: skip
    if args.worker_class == "gthread":
        # Only here: gunicorn turns sync into gthread whenever --threads exceeds 1.
        command += ["--threads", str(args.threads), "--keep-alive", "5"]
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        # A session of its own, so that a stuck worker can be killed along with its master
        # and nothing else.
        return subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop_gunicorn(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)  # the master stops its workers
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def get(port: int, path: str, timeout: float = 10.0) -> tuple[int, bytes, int]:
    """(status, body, size of the whole response as sent, give or take a few header bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        head = len(f"HTTP/1.1 {response.status} {response.reason}\r\n\r\n")
        head += sum(len(f"{name}: {value}\r\n") for name, value in response.getheaders())
        return response.status, body, head + len(body)
    finally:
        conn.close()


def wait_healthy(proc: subprocess.Popen[bytes], port: int, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"gunicorn exited with {proc.returncode}; see {log}")
        try:
            status, body, _ = get(port, "/health", timeout=5)
        except OSError as exc:
            last = str(exc)
        else:
            if status == 200:
                return
            last = f"{status} {body[:500]!r}"
        time.sleep(0.25)
    raise BenchError(f"GET /health did not answer 200 within {timeout:.0f} s: {last}")


# --- Where the CPU goes ------------------------------------------------------------------------


def processes() -> dict[int, tuple[str, int, float]]:
    """Every process of the machine: pid -> (command name, parent pid, CPU seconds used)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime, all threads
        found[int(entry.name)] = (comm, int(fields[1]), cpu)
    return found


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy, all cores together (steal counts as busy)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


@dataclass
class CpuSample:
    at: float
    machine: float
    by_pid: dict[int, tuple[str, int, float]]
    wrk: float


@dataclass
class CpuProbe:
    """CPU used by each party to the benchmark, read from /proc, so that the figures show
    whether the client or a neighbour took the cores the server needed."""

    gunicorn_master: int

    def sample(self) -> CpuSample:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return CpuSample(
            at=time.monotonic(),
            machine=machine_busy_seconds(),
            by_pid=processes(),
            wrk=children.ru_utime + children.ru_stime,  # reaped children: wrk only
        )

    def party(self, pid: int, comm: str, ppid: int) -> str | None:
        if self.gunicorn_master in (pid, ppid):
            return "gunicorn"
        if comm.startswith("postgres"):
            return "postgres"
        if comm.startswith("redis-server"):
            return "redis"
        return None

    def used(self, before: CpuSample, after: CpuSample) -> dict[str, float]:
        """CPU seconds of each party between two samples, plus the machine's and the wall's.

        A process started in between counts in full (PostgreSQL forks a backend for each new
        connection); one that ended in between is lost, which persistent connections avoid.
        """
        used = {"gunicorn": 0.0, "postgres": 0.0, "redis": 0.0}
        for pid, (comm, ppid, cpu) in after.by_pid.items():
            name = self.party(pid, comm, ppid)
            if name is not None:
                earlier = before.by_pid.get(pid)
                used[name] += cpu - (earlier[2] if earlier and earlier[0] == comm else 0.0)
        used["wrk"] = after.wrk - before.wrk
        used["machine"] = after.machine - before.machine
        used["wall"] = after.at - before.at
        return used


# --- Checks ------------------------------------------------------------------------------------


def check_targets(port: int, page_size: int) -> dict[str, int]:
    """Both answer 200 with `page_size` rows: the same SKUs in the same order.

    Returns the size of each target's reply, which every wrk round is checked against.
    """
    sizes: dict[str, int] = {}
    slugs: dict[str, list[str]] = {}
    for target, path in ((OURS, OURS_PATH), (FLOOR, FLOOR_PATH)):
        status, body, size = get(port, f"{path}?page_size={page_size}")
        if status != 200:
            raise BenchError(f"{target}: GET {path} answered {status}: {body[:500]!r}")
        rows = json.loads(body)["results"]
        if len(rows) != page_size:
            raise BenchError(
                f"{target}: {len(rows)} rows instead of {page_size}; seed more SKUs (--skus)."
            )
        sizes[target] = size
        slugs[target] = [row["slug"] for row in rows]
    if slugs[OURS] != slugs[FLOOR]:
        raise BenchError("the API and the floor return different SKUs or a different order")
    return sizes


def check_report(target: str, report: dict[str, Any], expected_size: int) -> None:
    """Fails loudly on any non-2xx reply (wrk counts statuses from 400 up) or socket error,
    and on replies of another size than the checked page, which is how a 3xx would show."""
    errors = {name: count for name, count in report["errors"].items() if count}
    if errors:
        raise BenchError(f"{target}: {errors} out of {report['requests']} requests")
    if report["requests"] == 0:
        raise BenchError(f"{target}: no request completed")
    per_response = report["bytes"] / report["requests"]
    if abs(per_response - expected_size) > 0.02 * expected_size:
        raise BenchError(
            f"{target}: replies average {per_response:.0f} bytes where the checked reply had "
            f"{expected_size}; some were not the 200 page"
        )


def retire_cached_pages(args: argparse.Namespace) -> None:
    """Bumps the catalog generation as a catalog write does, so that no page cached by an
    earlier run is served: each run warms its own cache."""
    client = redis_client(args)
    if client.exists(GENERATION_KEY):
        client.incr(GENERATION_KEY)


def cache_state(args: argparse.Namespace) -> dict[str, Any]:
    """The catalog generation, and the SKU-list pages cached under it with their TTL in ms."""
    client = redis_client(args)
    raw = client.get(GENERATION_KEY)
    generation = raw.decode() if raw else None
    pattern = f"marketplace-bench:1:catalog:{generation}:skus*".encode()
    entries = {key.decode(): client.pttl(key) for key in client.scan_iter(match=pattern)}
    return {"generation": generation, "entries": entries}


def cache_stayed_warm(before: dict[str, Any], after: dict[str, Any]) -> tuple[bool, str]:
    """Whether every request of the run was a hit: the generation did not move, no page was
    added, and the pages cached before the first round were never written again (a miss
    writes its page, which would reset the TTL)."""
    if not before["entries"]:
        return False, "no SKU list was cached before the first round"
    if before["generation"] != after["generation"]:
        return False, "the catalog generation changed during the run"
    if set(after["entries"]) != set(before["entries"]):
        return False, "pages were cached or evicted during the run"
    for key, ttl in before["entries"].items():
        if after["entries"][key] > ttl:
            return False, f"{key} was written again during the run (a miss)"
    return True, "page cached before round 1 and never written again, generation unchanged"


# --- wrk ---------------------------------------------------------------------------------------


def percentile_us(histogram: list[tuple[int, int]], p: float) -> float:
    """The smallest latency with at least p per cent of the samples at or below it."""
    merged: dict[int, int] = {}
    for value, count in histogram:
        merged[value] = merged.get(value, 0) + count
    wanted = p / 100 * sum(merged.values())
    seen = 0
    for value in sorted(merged):
        seen += merged[value]
        if seen >= wanted:
            return float(value)
    return float("nan")


@dataclass
class Round:
    target: str
    round: int
    requests: int
    duration_s: float
    histogram: list[tuple[int, int]]
    cpu_s: dict[str, float]

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s

    def percentile_ms(self, p: float) -> float:
        return percentile_us(self.histogram, p) / 1000


def run_wrk(
    args: argparse.Namespace, url: str, seconds: int, probe: CpuProbe
) -> tuple[dict[str, Any], dict[str, float]]:
    command = [
        "wrk", "-t1", f"-c{args.connections}", f"-d{seconds}s", "--timeout", "5s",
        "-s", str(LUA_REPORT), url,
    ]  # fmt: skip
    before = probe.sample()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    after = probe.sample()
    if done.returncode != 0:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stderr.strip()}")
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH-JSON ")), None)
    if line is None:
        raise BenchError(f"wrk printed no report:\n{done.stdout}\n{done.stderr}")
    return json.loads(line.removeprefix("BENCH-JSON ")), probe.used(before, after)


def measure(
    args: argparse.Namespace, port: int, sizes: dict[str, int], probe: CpuProbe
) -> list[Round]:
    urls = {
        OURS: f"http://127.0.0.1:{port}{OURS_PATH}?page_size={args.page_size}",
        FLOOR: f"http://127.0.0.1:{port}{FLOOR_PATH}?page_size={args.page_size}",
    }
    for target in (OURS, FLOOR):
        print(f"warm-up {target}: {args.warmup} s", flush=True)
        report, _ = run_wrk(args, urls[target], args.warmup, probe)
        check_report(target, report, sizes[target])

    rounds: list[Round] = []
    for n in range(1, args.rounds + 1):
        # ABBA: each target goes first in every other round, so that a trend over the run
        # (a neighbour's job, autovacuum, the CPU's clock) does not favour either.
        for target in (OURS, FLOOR) if n % 2 else (FLOOR, OURS):
            report, cpu = run_wrk(args, urls[target], args.duration, probe)
            check_report(target, report, sizes[target])
            r = Round(
                target=target,
                round=n,
                requests=report["requests"],
                duration_s=report["duration_us"] / 1e6,
                histogram=[(value, count) for value, count in report["histogram"]],
                cpu_s=cpu,
            )
            rounds.append(r)
            print(
                f"round {n} {target:5}  {r.rps:7.1f} req/s  p50 {r.percentile_ms(50):6.2f} ms"
                f"  p95 {r.percentile_ms(95):6.2f} ms",
                flush=True,
            )
    return rounds


# --- Report ------------------------------------------------------------------------------------


@dataclass
class Summary:
    target: str
    requests: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    synthetic_pct: float  # latency samples wrk's coordinated-omission correction added
    cpu_ms_per_request: dict[str, float]
    machine_busy_pct: float  # of all cores, during this target's rounds
    others_pct: float  # of all cores, taken by processes that are no party to the bench


def summarize(rounds: list[Round], target: str) -> Summary:
    mine = [r for r in rounds if r.target == target]
    histogram = [pair for r in mine for pair in r.histogram]
    requests = sum(r.requests for r in mine)
    cpu: dict[str, float] = {}
    for r in mine:
        for name, seconds in r.cpu_s.items():
            cpu[name] = cpu.get(name, 0.0) + seconds
    machine, wall = cpu.pop("machine"), cpu.pop("wall")
    one_pct = wall * (os.cpu_count() or 1) / 100
    return Summary(
        target=target,
        requests=requests,
        rps=requests / sum(r.duration_s for r in mine),
        p50_ms=percentile_us(histogram, 50) / 1000,
        p95_ms=percentile_us(histogram, 95) / 1000,
        p99_ms=percentile_us(histogram, 99) / 1000,
        synthetic_pct=100 * (sum(count for _, count in histogram) - requests) / requests,
        cpu_ms_per_request={name: 1000 * seconds / requests for name, seconds in cpu.items()},
        machine_busy_pct=machine / one_pct,
        others_pct=max(0.0, machine - sum(cpu.values())) / one_pct,
    )


def versions(args: argparse.Namespace, env: dict[str, str]) -> dict[str, str]:
    import django
    import psycopg

    with psycopg.connect(env["MARKETPLACE_DATABASE_URL"]) as conn:
        pg = conn.execute("SHOW server_version").fetchone()[0].split()[0]
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    words = (wrk.stdout or wrk.stderr).split()
    return {
        "cpus": str(os.cpu_count()),
        "python": platform.python_version(),
        "django": django.get_version(),
        "postgresql": pg,
        "redis": redis_client(args).info("server")["redis_version"],
        "wrk": words[1] if len(words) > 1 else "?",
    }


def print_report(
    args: argparse.Namespace, info: dict[str, Any], ours: Summary, floor: Summary
) -> dict[str, Any]:
    cold = args.cache_seconds == 0
    warm_ok, warm_why = info["cache_warm"]
    ratios = {
        "rps": ours.rps / floor.rps,
        "p50": ours.p50_ms / floor.p50_ms,
        "p95": ours.p95_ms / floor.p95_ms,
    }
    rps_ok = ratios["rps"] >= TARGET_RPS_RATIO
    p95_ok = ours.p95_ms <= TARGET_P95_MS
    v = info["versions"]
    threads = f" threads={args.threads}" if args.worker_class == "gthread" else ""
    cache = (
        "off, every request of ours misses"
        if cold
        else (f"{'yes' if warm_ok else 'NO'} ({warm_why})")
    )

    print()
    print(
        f"bench/catalog: ours = GET {OURS_PATH}?page_size={args.page_size}, "
        f"floor = GET {FLOOR_PATH}?page_size={args.page_size} (plain Django, .values())"
    )
    print(
        f"  gunicorn {args.worker_class} workers={args.workers}{threads} on 127.0.0.1"
        f" | wrk -t1 -c{args.connections} | {args.rounds} rounds x {args.duration} s per"
        f" target, alternating ABBA, after {args.warmup} s warm-up each"
    )
    print(
        f"  {info['active_skus']} active SKUs, {args.page_size} rows per reply"
        f" ({info['sizes'][OURS]} B ours, {info['sizes'][FLOOR]} B floor)"
        f" | throttle rates anon {args.throttle_anon}, user {args.throttle_user}"
    )
    print(f"  cache warm: {cache}")
    print(
        f"  {v['cpus']} CPUs | Python {v['python']}, Django {v['django']},"
        f" PostgreSQL {v['postgresql']}, Redis {v['redis']}, wrk {v['wrk']}"
        + ("" if args.settings == DEFAULT_SETTINGS else f" | VARIANT {args.settings}")
    )
    print()
    print(
        f"  {'target':<7}{'req/s':>8}{'p50 ms':>8}{'p95 ms':>8}{'p99 ms':>8}{'requests':>10}"
        f"  | CPU ms per request: {'gunicorn':>8}{'postgres':>9}{'redis':>6}{'wrk':>6}"
        "  | machine busy (others)"
    )
    for s in (ours, floor):
        c = s.cpu_ms_per_request
        print(
            f"  {s.target:<7}{s.rps:>8.1f}{s.p50_ms:>8.2f}{s.p95_ms:>8.2f}{s.p99_ms:>8.2f}"
            f"{s.requests:>10}  | {'':20}{c['gunicorn']:>8.2f}{c['postgres']:>9.2f}"
            f"{c['redis']:>6.2f}{c['wrk']:>6.2f}"
            f"  | {s.machine_busy_pct:>3.0f} % ({s.others_pct:.0f} %)"
        )
    print()
    print(
        f"  ours / floor   requests/s {ratios['rps']:.2f}   p50 {ratios['p50']:.2f}"
        f"   p95 {ratios['p95']:.2f}   (latency ratios: below 1, ours is faster)"
    )
    print(
        f"  target: requests/s ratio >= {TARGET_RPS_RATIO}"
        f"      {'PASS' if rps_ok else 'FAIL'} ({ratios['rps']:.2f})"
    )
    print(
        f"  target: ours p95 <= {TARGET_P95_MS:g} ms at {args.connections} clients"
        f"   {'PASS' if p95_ok else 'FAIL'} ({ours.p95_ms:.2f} ms)"
    )
    print(
        f"  (percentiles as wrk records them; its coordinated-omission correction added"
        f" {ours.synthetic_pct:.1f} % samples to ours, {floor.synthetic_pct:.1f} % to the floor)"
    )
    if cold:
        print("  (the targets are set for a warm cache: this run measured the cold path)")
    return {**ratios, "targets_met": rps_ok and p95_ok and warm_ok and not cold}


def save(
    args: argparse.Namespace,
    info: dict[str, Any],
    rounds: list[Round],
    summaries: list[Summary],
    ratios: dict[str, Any],
) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / f"catalog-{stamp}.json"
    document = {
        "bench": "catalog",
        "at": stamp,
        "config": {k: v for k, v in vars(args).items() if k not in ("no_save", "strict")},
        "info": info,
        "summary": [asdict(s) for s in summaries],
        "ratios": ratios,
        "rounds": [
            {
                "target": r.target,
                "round": r.round,
                "requests": r.requests,
                "duration_s": r.duration_s,
                "rps": r.rps,
                "p50_ms": r.percentile_ms(50),
                "p95_ms": r.percentile_ms(95),
                "p99_ms": r.percentile_ms(99),
                "cpu_s": r.cpu_s,
            }
            for r in rounds
        ],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


# --- Main --------------------------------------------------------------------------------------


def main() -> int:
    args = parse_args()
    if shutil.which("wrk") is None:
        print("bench/catalog needs wrk on PATH: apt-get install -y wrk", file=sys.stderr)
        return 2
    os.chdir(REPO)
    env = bench_env(args)
    Path(args.data_dir).mkdir(parents=True, exist_ok=True)

    check_redis_db_is_ours(args)
    ensure_database(args)
    if not args.no_seed:
        migrate_and_seed(env, args.skus)
    retire_cached_pages(args)

    log = Path(args.data_dir) / "gunicorn.log"
    port = free_port()
    proc = start_gunicorn(args, env, port, log)
    try:
        wait_healthy(proc, port, log)
        probe = CpuProbe(gunicorn_master=proc.pid)
        sizes = check_targets(port, args.page_size)
        info: dict[str, Any] = {
            "sizes": sizes,
            "active_skus": active_skus(env),
            "versions": versions(args, env),
        }
        # check_targets has just cached the page: from here on every request of ours must hit.
        cache_before = cache_state(args)
        rounds = measure(args, port, sizes, probe)
        info["cache_warm"] = cache_stayed_warm(cache_before, cache_state(args))
        if args.cache_seconds == 0 and cache_before["entries"]:
            raise BenchError("--cache-seconds 0, yet the SKU list was cached")
    finally:
        stop_gunicorn(proc)

    ours, floor = summarize(rounds, OURS), summarize(rounds, FLOOR)
    ratios = print_report(args, info, ours, floor)
    if not args.no_save:
        path = save(args, info, rounds, [ours, floor], ratios)
        print(f"\n  figures written to {path.relative_to(REPO)}")
    if args.strict and not ratios["targets_met"]:
        return 3
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench/catalog FAILED: {exc}", file=sys.stderr)
        sys.exit(1)
