"""Benchmark of the public SKU list against django-oscar-api and a plain-Django floor, side by
side, at 200 and at 100,000 SKUs, cold and warm.

    .venv/bin/python bench/catalog/run.py            # from the repository root

What it does, for each size (--sizes, default 200 then 100000):
1. creates the PostgreSQL databases `mkp_cat_bench` (ours) and `mkp_cat_bench_oscar` (the
   peer's) if missing, migrates them, and seeds ours to the size (bench/catalog/seed.py: 200
   SKUs through the catalog services, the rest copied in bulk by the database) and the peer's
   with the same products (bench/catalog/oscar/seed.py, by COPY);
2. makes bench/catalog/.venv with the peer's pinned requirements (requirements-peers.txt) if
   it is missing or they changed;
3. starts three gunicorns on free loopback ports: ours with the catalog cache off
   (MARKETPLACE_CATALOG_CACHE_SECONDS=0: every request builds its page and no cache is asked,
   the **cold** path), which also serves the floor (bench/catalog/views.py); ours with the
   cache on (**warm**); and the django-oscar shop serving django-oscar-api's product list
   (bench/catalog/oscar/), each on its own database, Redis database and key prefix;
4. checks once that every target answers each page (the plain list, a search, a small
   category) with the same products in the same order;
5. warms each up, then measures them in interleaved rounds: in each round every page, and for
   each page every target, in an order that turns by one each round, so that drift on the
   machine falls on all of them alike;
6. prints requests/s, p50 and p95, where the CPU went, and the ratios ours/oscar and
   ours/floor, cold and warm, against the targets; writes the figures to bench/results/
   (git-ignored); stops the servers.

It exits 1 if any response was not 2xx, any socket error occurred, any reply was not the
checked page, or the warm cache missed; with --strict it also exits 3 when a target is missed.

Load generator: wrk (Debian package `wrk`), one C thread, scripted only in its done() hook
(bench/catalog/report.lua), which hands back the whole latency histogram so that the rounds of
a target are merged before percentiles are taken (wrk's latencies, with its coordinated-
omission correction; the runner prints how many samples that added).
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
RESULTS_DIR = REPO / "bench" / "results"
LUA_REPORT = HERE / "report.lua"
PEERS_VENV = HERE / ".venv"
PEERS_REQUIREMENTS = HERE / "requirements-peers.txt"
DEFAULT_SETTINGS = "bench.catalog.settings"

sys.path.insert(0, str(REPO))
from bench.procfs import backend_database  # noqa: E402 (needs the repository on the path)

COLD, WARM, FLOOR, OSCAR = "ours-cold", "ours-warm", "floor", "oscar"
TARGETS = (COLD, WARM, FLOOR, OSCAR)
PATHS = {
    COLD: "/api/v1/skus",
    WARM: "/api/v1/skus",
    FLOOR: "/bench/floor/skus",  # bench/catalog/urls.py
    OSCAR: "/api/products/",  # bench/catalog/oscar/urls.py
}
# The pages, each the same rows at every size (bench/catalog/seed.py).
PAGES = {
    "list": "",
    "search": "q=quasar",
    "category": "category=bench-small",
}
# Pages ours caches (a search never is: any text is a valid query).
CACHED_PAGES = ("list", "category")

# The targets, for the cold path: the page built for every request.
TARGET_OSCAR_RATIO = 1.0
TARGET_FLOOR_RATIO = 0.7

# Keys the bench writes in its Redis database: the caches of the two gunicorns of ours
# (KEY_PREFIX of the bench settings) and the Celery broker's bindings and queue.
OWN_KEY_PREFIXES = (b"marketplace-bench", b"_kombu.", b"unacked")
GENERATION_KEY = b"marketplace-bench:1:catalog:generation"  # catalog.cache.GENERATION_KEY

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    pass


# --- Configuration -----------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="GET /api/v1/skus against django-oscar-api and a plain-Django floor, on "
        "gunicorn, PostgreSQL and Redis, with wrk on loopback.",
    )
    add = parser.add_argument
    add("--postgres", default="postgres://postgres@127.0.0.1:5432", help="server, no database")
    add("--database", default="mkp_cat_bench", help="ours; created if missing")
    add("--oscar-database", default="mkp_cat_bench_oscar", help="the peer's; created if missing")
    add("--redis", default="redis://127.0.0.1:6379", help="server, no database number")
    add("--redis-db", type=int, default=11, help="Redis database for cache and broker")
    add("--sizes", default="200,100000", help="SKUs on sale, comma-separated, in order")
    add("--pages", default=",".join(PAGES), help=f"which of {', '.join(PAGES)}")
    add("--page-size", type=int, default=50)
    add("--connections", type=int, default=16, help="concurrent clients")
    add("--duration", type=int, default=5, help="seconds per measured round, page and target")
    add("--rounds", type=int, default=3, help="measured rounds")
    add("--warmup", type=int, default=2, help="seconds of warm-up per page and target")
    # Sync workers, four on two cores (README.md, "Choices"), for every server alike.
    add("--workers", type=int, default=4)
    # Never reached, with a one-second window (README.md, "Choices").
    add("--throttle-anon", default="100000/s")
    add("--throttle-user", default="100000/s")
    add("--settings", default=DEFAULT_SETTINGS, help="settings module of ours (a variant)")
    add("--data-dir", default=str(REPO / "var" / "bench-catalog"), help="MARKETPLACE_DATA_DIR")
    add("--no-seed", action="store_true", help="skip migrate and seed (one size only)")
    add("--no-save", action="store_true", help="do not write bench/results/*.json")
    add("--strict", action="store_true", help="exit 3 when a target is missed")
    args = parser.parse_args()
    args.sizes = [int(size) for size in args.sizes.split(",")]
    args.pages = [page for page in args.pages.split(",") if page]
    unknown = set(args.pages) - set(PAGES)
    if unknown:
        parser.error(f"unknown pages: {', '.join(sorted(unknown))}")
    return args


def db_url(args: argparse.Namespace, database: str) -> str:
    return f"{args.postgres.rstrip('/')}/{database}"


def ours_env(args: argparse.Namespace, *, cache_seconds: int) -> dict[str, str]:
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
        MARKETPLACE_DATABASE_URL=db_url(args, args.database),
        MARKETPLACE_REDIS_URL=redis_url,
        MARKETPLACE_BROKER_URL=redis_url,
        MARKETPLACE_CELERY_QUEUE="marketplace-bench",
        MARKETPLACE_DATA_DIR=args.data_dir,
        MARKETPLACE_THROTTLE_ANON=args.throttle_anon,
        MARKETPLACE_THROTTLE_USER=args.throttle_user,
        MARKETPLACE_ALLOWED_HOSTS="127.0.0.1,localhost",
        MARKETPLACE_CATALOG_CACHE_SECONDS=str(cache_seconds),
        MARKETPLACE_LOG_LEVEL="WARNING",
    )
    return env


def oscar_env(args: argparse.Namespace) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MARKETPLACE_", "BENCH_OSCAR_")) and k != "DJANGO_SETTINGS_MODULE"
    }
    server = args.postgres.rstrip("/").split("://", 1)[1]
    user, _, hostport = server.rpartition("@")
    host, _, port = hostport.partition(":")
    env.update(
        DJANGO_SETTINGS_MODULE="bench.catalog.oscar.settings",
        PYTHONPATH=str(REPO),
        BENCH_OSCAR_DATABASE=args.oscar_database,
        BENCH_OSCAR_USER=user or "postgres",
        BENCH_OSCAR_HOST=host or "127.0.0.1",
        BENCH_OSCAR_PORT=port or "5432",
    )
    return env


# --- Set-up: the peer's venv, databases, Redis, seed -------------------------------------------


def ensure_peers_venv() -> Path:
    """bench/catalog/.venv with requirements-peers.txt installed; reinstalled when the file
    changes (its hash is kept in the venv)."""
    python = PEERS_VENV / "bin" / "python"
    stamp = PEERS_VENV / "requirements-peers.sha256"
    wanted = hashlib.sha256(PEERS_REQUIREMENTS.read_bytes()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text().strip() == wanted:
        return python
    if not python.exists():
        print(f"creating {PEERS_VENV.relative_to(REPO)} for django-oscar-api", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
    print("installing the peer's pinned requirements", flush=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "-r", str(PEERS_REQUIREMENTS)],
        check=True,
    )  # fmt: skip
    stamp.write_text(wanted + "\n")
    return python


def ensure_database(args: argparse.Namespace, database: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(db_url(args, "postgres"), autocommit=True) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
        if found.fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
            print(f"created database {database}")


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


def migrate_and_seed(args: argparse.Namespace, oscar_python: Path, skus: int) -> None:
    env = ours_env(args, cache_seconds=0)
    python = sys.executable
    subprocess.run([python, "manage.py", "migrate", "--noinput", "-v", "0"], env=env, check=True)
    subprocess.run([python, "-m", "bench.catalog.seed", "--skus", str(skus)], env=env, check=True)
    peer = oscar_env(args)
    subprocess.run(
        [str(oscar_python), "-m", "django", "migrate", "--noinput", "-v", "0"],
        env=peer,
        check=True,
    )
    subprocess.run(
        [str(oscar_python), "-m", "bench.catalog.oscar.seed", "--from",
         db_url(args, args.database)],
        env=peer,
        check=True,
    )  # fmt: skip
    import psycopg

    # The seeds' writes reach the disk now, not from the checkpointer during the rounds (its
    # CPU counts as the server's, on whichever target runs then).
    with psycopg.connect(db_url(args, "postgres"), autocommit=True) as conn:
        conn.execute("CHECKPOINT")


def active_skus(args: argparse.Namespace) -> int:
    import psycopg

    with psycopg.connect(db_url(args, args.database)) as conn:
        row = conn.execute("SELECT count(*) FROM catalog_sku WHERE status = 'active'").fetchone()
    return row[0]


# --- gunicorn ----------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    health: str


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_gunicorn(
    args: argparse.Namespace,
    name: str,
    python: str,
    app: str,
    env: dict[str, str],
    health: str,
) -> Server:
    port = free_port()
    log = Path(args.data_dir) / f"gunicorn-{name}.log"
    command = [
        python, "-m", "gunicorn", app,
        "--bind", f"127.0.0.1:{port}",
        "--worker-class", "sync",
        "--workers", str(args.workers),
        "--log-level", "warning",
    ]  # fmt: skip
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        # A session of its own, so that a stuck worker can be killed along with its master
        # and nothing else.
        proc = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Server(name, port, proc, log, health)


def stop_gunicorn(server: Server) -> None:
    proc = server.proc
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)  # the master stops its workers
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def get(port: int, path: str, timeout: float = 30.0) -> tuple[int, bytes, int]:
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


def wait_healthy(server: Server, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise BenchError(f"{server.name}: gunicorn exited; see {server.log}")
        try:
            status, body, _ = get(server.port, server.health, timeout=5)
        except OSError as exc:
            last = str(exc)
        else:
            if status == 200:
                return
            last = f"{status} {body[:500]!r}"
        time.sleep(0.25)
    raise BenchError(f"{server.name}: GET {server.health} not 200 within {timeout:.0f} s: {last}")


# --- Where the CPU goes ------------------------------------------------------------------------


def processes() -> dict[int, tuple[str, int, float]]:
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
    """CPU used by each party to the benchmark, read from /proc: the gunicorns (masters and
    workers), the PostgreSQL backends of the bench's two databases and the server's own
    processes (other databases' backends are others'), Redis, and wrk."""

    masters: set[int]
    databases: set[str]

    def sample(self) -> CpuSample:
        import resource

        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return CpuSample(
            at=time.monotonic(),
            machine=machine_busy_seconds(),
            by_pid=processes(),
            wrk=children.ru_utime + children.ru_stime,  # reaped children: wrk, the seeds
        )

    def party(self, pid: int, comm: str, ppid: int) -> str | None:
        if pid in self.masters or ppid in self.masters:
            return "gunicorn"
        if comm.startswith("postgres:"):
            database = comm.removeprefix("postgres:")
            return "postgres" if database in self.databases or not database else None
        if comm.startswith("redis-server"):
            return "redis"
        return None

    def used(self, before: CpuSample, after: CpuSample) -> dict[str, float]:
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


def url_of(args: argparse.Namespace, target: str, page: str) -> str:
    query = "&".join(filter(None, [PAGES[page], f"page_size={args.page_size}"]))
    return f"{PATHS[target]}?{query}"


def check_targets(
    args: argparse.Namespace, ports: dict[str, int]
) -> tuple[dict[tuple[str, str], int], dict[str, int]]:
    """Every target answers every page 200 with the same products in the same order (oscar's
    UPC is the SKU's slug). Returns each reply's size, which every wrk round is checked
    against, and each page's number of rows."""
    sizes: dict[tuple[str, str], int] = {}
    rows: dict[str, int] = {}
    for page in args.pages:
        seen: dict[str, list[str]] = {}
        for target in TARGETS:
            path = url_of(args, target, page)
            status, body, size = get(ports[target], path)
            if status != 200:
                raise BenchError(f"{target}: GET {path} answered {status}: {body[:500]!r}")
            results = json.loads(body)["results"]
            seen[target] = [row.get("slug") or row.get("upc") for row in results]
            sizes[target, page] = size
        first = seen[COLD]
        if not first:
            raise BenchError(f"{page}: no rows; seed the catalog (bench/catalog/seed.py)")
        for target, slugs in seen.items():
            if slugs != first:
                raise BenchError(f"{page}: {target} lists other products than {COLD}")
        rows[page] = len(first)
    return sizes, rows


def check_report(name: str, report: dict[str, Any], expected_size: int) -> None:
    """Fails loudly on any non-2xx reply (wrk counts statuses from 400 up) or socket error,
    and on replies of another size than the checked page, which is how a 3xx would show."""
    errors = {kind: count for kind, count in report["errors"].items() if count}
    if errors:
        raise BenchError(f"{name}: {errors} out of {report['requests']} requests")
    if report["requests"] == 0:
        raise BenchError(f"{name}: no request completed")
    per_response = report["bytes"] / report["requests"]
    if abs(per_response - expected_size) > 0.02 * expected_size:
        raise BenchError(
            f"{name}: replies average {per_response:.0f} bytes where the checked reply had "
            f"{expected_size}; some were not the 200 page"
        )


def retire_cached_pages(args: argparse.Namespace) -> None:
    """Bumps the catalog generation as a catalog write does, so that no page cached by an
    earlier run (or size) is served: each run warms its own cache."""
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


def cache_stayed_warm(
    before: dict[str, Any], after: dict[str, Any], cached_pages: int
) -> tuple[bool, str]:
    """Whether every request of the warm target to a cached page was a hit: the generation
    did not move, no page was added, and the pages cached before the first round were never
    written again (a miss writes its page, which would reset the TTL)."""
    if len(before["entries"]) != cached_pages:
        return False, f"{len(before['entries'])} SKU lists cached, not {cached_pages}"
    if before["generation"] != after["generation"]:
        return False, "the catalog generation changed during the run"
    if set(after["entries"]) != set(before["entries"]):
        return False, "pages were cached or evicted during the run"
    for key, ttl in before["entries"].items():
        if after["entries"][key] > ttl:
            return False, f"{key} was written again during the run (a miss)"
    return True, "pages cached before round 1 and never written again, generation unchanged"


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
    size: int
    page: str
    target: str
    round: int
    requests: int
    duration_s: float
    histogram: list[tuple[int, int]] = field(repr=False)
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
    args: argparse.Namespace,
    size: int,
    ports: dict[str, int],
    sizes: dict[tuple[str, str], int],
    probe: CpuProbe,
) -> list[Round]:
    def url(target: str, page: str) -> str:
        return f"http://127.0.0.1:{ports[target]}{url_of(args, target, page)}"

    for page in args.pages:
        for target in TARGETS:
            report, _ = run_wrk(args, url(target, page), args.warmup, probe)
            check_report(f"{target} {page} warm-up", report, sizes[target, page])

    rounds: list[Round] = []
    for n in range(1, args.rounds + 1):
        for page in args.pages:
            # Each round starts the targets one further along, so none is always first.
            shift = (n - 1) % len(TARGETS)
            for target in TARGETS[shift:] + TARGETS[:shift]:
                report, cpu = run_wrk(args, url(target, page), args.duration, probe)
                check_report(f"{target} {page}", report, sizes[target, page])
                r = Round(
                    size=size,
                    page=page,
                    target=target,
                    round=n,
                    requests=report["requests"],
                    duration_s=report["duration_us"] / 1e6,
                    histogram=[(value, count) for value, count in report["histogram"]],
                    cpu_s=cpu,
                )
                rounds.append(r)
                print(
                    f"  {size:>7} round {n} {page:8} {target:9} {r.rps:7.1f} req/s"
                    f"  p50 {r.percentile_ms(50):7.2f} ms  p95 {r.percentile_ms(95):7.2f} ms",
                    flush=True,
                )
    return rounds


# --- Report ------------------------------------------------------------------------------------


@dataclass
class Summary:
    size: int
    page: str
    target: str
    requests: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    synthetic_pct: float  # latency samples wrk's coordinated-omission correction added
    cpu_ms_per_request: dict[str, float]
    machine_busy_pct: float  # of all cores, during these rounds
    others_pct: float  # of all cores, taken by processes that are no party to the bench


def summarize(rounds: list[Round], size: int, page: str, target: str) -> Summary:
    mine = [r for r in rounds if (r.size, r.page, r.target) == (size, page, target)]
    histogram = [pair for r in mine for pair in r.histogram]
    requests = sum(r.requests for r in mine)
    cpu: dict[str, float] = {}
    for r in mine:
        for name, seconds in r.cpu_s.items():
            cpu[name] = cpu.get(name, 0.0) + seconds
    machine, wall = cpu.pop("machine"), cpu.pop("wall")
    one_pct = wall * (os.cpu_count() or 1) / 100
    return Summary(
        size=size,
        page=page,
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


def versions(args: argparse.Namespace, oscar_python: Path) -> dict[str, str]:
    import django
    import psycopg

    with psycopg.connect(db_url(args, args.database)) as conn:
        pg = conn.execute("SHOW server_version").fetchone()[0].split()[0]
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    words = (wrk.stdout or wrk.stderr).split()
    peer = subprocess.run(
        [str(oscar_python), "-c", "from importlib.metadata import version as v; print(*map(v, "
         "['Django', 'django-oscar', 'django-oscar-api', 'djangorestframework']))"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    return {
        "cpus": str(os.cpu_count()),
        "python": platform.python_version(),
        "django": django.get_version(),
        "postgresql": pg,
        "redis": redis_client(args).info("server")["redis_version"],
        "wrk": words[1] if len(words) > 1 else "?",
        "oscar": f"django-oscar {peer[1]}, django-oscar-api {peer[2]} (Django {peer[0]}, "
        f"DRF {peer[3]})",
    }


def server_cpu_ms(s: Summary) -> float:
    """CPU per request of the server side (gunicorn, PostgreSQL, Redis), the client left out."""
    c = s.cpu_ms_per_request
    return c["gunicorn"] + c["postgres"] + c["redis"]


def ratios_of(by: dict[str, Summary]) -> dict[str, float]:
    """Requests/s ratios, and the same from CPU per request (`cpu …`: the inverse ratio of
    the server side's CPU per request), which what else runs on the machine moves less."""
    ratios = {}
    for ours, short in ((COLD, "cold"), (WARM, "warm")):
        for other in (OSCAR, FLOOR):
            ratios[f"{short}/{other}"] = by[ours].rps / by[other].rps
            ratios[f"cpu {short}/{other}"] = server_cpu_ms(by[other]) / server_cpu_ms(by[ours])
    return ratios


def print_size(
    args: argparse.Namespace, size: int, info: dict[str, Any], summaries: list[Summary]
) -> dict[str, dict[str, float]]:
    warm_ok, warm_why = info["cache_warm"]
    print()
    print(
        f"bench/catalog at {info['active_skus']} SKUs on sale: {args.page_size} rows per page"
        f" ({', '.join(f'{page} {n}' for page, n in info['rows'].items())} rows);"
        f" warm cache: {'yes' if warm_ok else 'NO'} ({warm_why})"
    )
    print(
        f"  {'page':9}{'target':10}{'req/s':>8}{'p50 ms':>8}{'p95 ms':>8}"
        f"  | CPU ms/request: {'gunicorn':>8}{'postgres':>9}{'redis':>6}{'wrk':>6}"
        "  | machine (others)"
    )
    ratios: dict[str, dict[str, float]] = {}
    for page in args.pages:
        by = {s.target: s for s in summaries if s.page == page}
        for target in TARGETS:
            s, c = by[target], by[target].cpu_ms_per_request
            print(
                f"  {page:9}{target:10}{s.rps:>8.1f}{s.p50_ms:>8.2f}{s.p95_ms:>8.2f}"
                f"  | {'':16}{c['gunicorn']:>8.2f}{c['postgres']:>9.2f}{c['redis']:>6.2f}"
                f"{c['wrk']:>6.2f}  | {s.machine_busy_pct:>3.0f} % ({s.others_pct:.0f} %)"
            )
        ratios[page] = ratios_of(by)
    print()
    names = ("cold/oscar", "warm/oscar", "cold/floor", "warm/floor")
    print(f"  {'ratios, ours / other':30}" + "".join(f"{name:>11}" for name in names))
    for page, r in ratios.items():
        print(f"  {page + ' requests/s':30}" + "".join(f"{r[n]:>11.2f}" for n in names))
        print(
            f"  {page + ' CPU per request (inverse)':30}"
            + "".join(f"{r['cpu ' + n]:>11.2f}" for n in names)
        )
    return ratios


def print_targets(ratios: dict[int, dict[str, dict[str, float]]]) -> bool:
    print()
    met = True
    for size, pages in ratios.items():
        for page, r in pages.items():
            oscar_ok = r["cold/oscar"] >= TARGET_OSCAR_RATIO
            floor_ok = r["cold/floor"] >= TARGET_FLOOR_RATIO
            met = met and oscar_ok and floor_ok
            print(
                f"  target at {size:>6} SKUs, {page:8}: cold >= {TARGET_OSCAR_RATIO} x oscar"
                f" {'PASS' if oscar_ok else 'FAIL'} ({r['cold/oscar']:.2f}; CPU"
                f" {r['cpu cold/oscar']:.2f}), cold >= {TARGET_FLOOR_RATIO} x floor"
                f" {'PASS' if floor_ok else 'FAIL'} ({r['cold/floor']:.2f}; CPU"
                f" {r['cpu cold/floor']:.2f})"
            )
    return met


def save(
    args: argparse.Namespace,
    infos: dict[int, dict[str, Any]],
    rounds: list[Round],
    summaries: list[Summary],
    ratios: dict[int, dict[str, dict[str, float]]],
) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / f"catalog-{stamp}.json"
    document = {
        "bench": "catalog",
        "at": stamp,
        "config": {k: v for k, v in vars(args).items() if k not in ("no_save", "strict")},
        "info": {str(size): info for size, info in infos.items()},
        "summary": [asdict(s) for s in summaries],
        "ratios": {str(size): pages for size, pages in ratios.items()},
        "rounds": [
            {
                **{k: v for k, v in asdict(r).items() if k != "histogram"},
                "rps": r.rps,
                "p50_ms": r.percentile_ms(50),
                "p95_ms": r.percentile_ms(95),
            }
            for r in rounds
        ],
    }
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    return path


# --- Main --------------------------------------------------------------------------------------


def run_size(
    args: argparse.Namespace, size: int, oscar_python: Path
) -> tuple[dict[str, Any], list[Round]]:
    if not args.no_seed:
        print(f"seeding {size} SKUs", flush=True)
        migrate_and_seed(args, oscar_python, size)
    retire_cached_pages(args)
    servers = {
        COLD: start_gunicorn(
            args, "cold", sys.executable, "config.wsgi:application",
            ours_env(args, cache_seconds=0), "/health",
        ),
        WARM: start_gunicorn(
            args, "warm", sys.executable, "config.wsgi:application",
            ours_env(args, cache_seconds=3600), "/health",
        ),
        OSCAR: start_gunicorn(
            args, "oscar", str(oscar_python), "bench.catalog.oscar.wsgi:application",
            oscar_env(args), "/api/products/?page_size=1",
        ),
    }  # fmt: skip
    try:
        for server in servers.values():
            wait_healthy(server)
        ports = {target: servers[target].port for target in (COLD, WARM, OSCAR)}
        ports[FLOOR] = ports[COLD]
        probe = CpuProbe(
            masters={server.proc.pid for server in servers.values()},
            databases={args.database, args.oscar_database},
        )
        sizes, rows = check_targets(args, ports)
        info: dict[str, Any] = {"active_skus": active_skus(args), "rows": rows}
        # check_targets has just cached the warm target's pages: from here on each of its
        # requests to them must hit.
        before = cache_state(args)
        rounds = measure(args, size, ports, sizes, probe)
        cached = sum(page in CACHED_PAGES for page in args.pages)
        info["cache_warm"] = cache_stayed_warm(before, cache_state(args), cached)
    finally:
        for server in servers.values():
            stop_gunicorn(server)
    return info, rounds


def main() -> int:
    args = parse_args()
    if shutil.which("wrk") is None:
        print("bench/catalog needs wrk on PATH: apt-get install -y wrk", file=sys.stderr)
        return 2
    if args.no_seed and len(args.sizes) > 1:
        print("--no-seed measures one size: give --sizes N", file=sys.stderr)
        return 2
    os.chdir(REPO)
    Path(args.data_dir).mkdir(parents=True, exist_ok=True)
    oscar_python = ensure_peers_venv()
    check_redis_db_is_ours(args)
    ensure_database(args, args.database)
    ensure_database(args, args.oscar_database)

    infos: dict[int, dict[str, Any]] = {}
    rounds: list[Round] = []
    summaries: list[Summary] = []
    ratios: dict[int, dict[str, dict[str, float]]] = {}
    for size in args.sizes:
        info, size_rounds = run_size(args, size, oscar_python)
        infos[size], rounds = info, rounds + size_rounds
        mine = [
            summarize(size_rounds, size, page, target) for page in args.pages for target in TARGETS
        ]
        summaries += mine
        ratios[size] = print_size(args, size, info, mine)
    infos[args.sizes[0]]["versions"] = versions(args, oscar_python)

    v = infos[args.sizes[0]]["versions"]
    print()
    print(
        f"  gunicorn sync x{args.workers} per server | wrk -t1 -c{args.connections} |"
        f" {args.rounds} rounds x {args.duration} s per page and target, interleaved,"
        f" after {args.warmup} s warm-up each | throttle {args.throttle_anon}"
    )
    print(
        f"  {v['cpus']} CPUs | Python {v['python']}, Django {v['django']},"
        f" PostgreSQL {v['postgresql']}, Redis {v['redis']}, wrk {v['wrk']} | {v['oscar']}"
        + ("" if args.settings == DEFAULT_SETTINGS else f" | VARIANT {args.settings}")
    )
    print(
        "  cold: ours with MARKETPLACE_CATALOG_CACHE_SECONDS=0 (no cache asked, every page "
        "built); warm: ours with its cache (a search is never cached); oscar has no cache"
    )
    met = print_targets(ratios)
    warm_ok = all(info["cache_warm"][0] for info in infos.values())
    if not args.no_save:
        path = save(args, infos, rounds, summaries, ratios)
        print(f"\n  figures written to {path.relative_to(REPO)}")
    if not warm_ok:
        raise BenchError("the warm target's cache missed; its figures are not warm")
    if args.strict and not met:
        return 3
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench/catalog FAILED: {exc}", file=sys.stderr)
        sys.exit(1)
