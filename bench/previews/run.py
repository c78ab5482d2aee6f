"""Benchmark of preview sessions on the real processes: time to ready against bare bubblewrap,
memory per open session, teardown lag after expiry, and a soak that must leak nothing.

    .venv/bin/python -m bench.previews.run            # from the repository root, about 7 min

What runs, all on this machine:
- PostgreSQL: the database `mkp_bench_previews` (dropped and created fresh, migrated), seeded
  through the services (bench/previews/seed.py): one active SKU with sandbox preview material
  (the demo server as `server.py`, tests/previews/factories.py) and BUYERS buyers with an API
  token each;
- Redis (database 13 by default) as cache and Celery broker; every key the run writes starts
  with `bench-previews-<run id>:` (the cache's KEY_PREFIX and kombu's global_keyprefix), and the
  run deletes those keys, and only those, when it ends;
- gunicorn serving config.wsgi with bench/previews/settings.py, as the Procfile runs it (1
  worker, 8 threads: a `Prefer: wait` holds a thread), restarted between phases with another
  MARKETPLACE_PREVIEW_MAX_TTL_SECONDS (a session's TTL is decided where it is opened);
- a Celery worker as the Procfile runs it (prefork, 2 processes), on a queue of the run's own,
  on the platform's app with the bench's probe (bench/previews/probe.py: when each task was
  received and ran, and its CPU); the sandboxes are children of the pool process that started
  them. No beat: each session's expiry is its own task (eta = expires_at); the sweep
  (previews.services.previews_sweep) is called once, by this process, at the end of the soak;
- MARKETPLACE_PREVIEW_DIR a short folder of the run's own under /tmp (Unix socket paths are at
  most 107 bytes, and every parent folder must be o+x for the sandboxes' host uids as root).

What it measures, in one run:
1. time to ready, measured by the client: POST /api/v1/skus/{slug}/previews with `Prefer:
   wait=5` (then GET /api/v1/previews/{id}, same header, while it says starting) until the
   answer says ready; and to the first 200 of /previews/{token}/ ("first byte served").
   Against the floor: previews.sandbox.Sandbox.start(spec) + wait_ready() in this process, the
   same command, material folder (the provisioner's verified copy) and limits; and, to tell the
   provisioner's own work apart, LocalProvisioner.start in this process. Sequential, then
   CONCURRENCY at once; the three take turns (each in each place), and every session is ended
   and torn down (and every floor sandbox stopped) before the next measurement. A breakdown from
   the session's created_at / started_at / ready_at, the probe's times and the CPU each party
   used shows where the time goes;
2. memory per open session: N sessions open, the PSS of every process of each sandbox
   (previews.sandbox.processes_of), and the worker's own growth (RSS and PSS of its main and
   pool processes) per session;
3. teardown lag: sessions with a TTL of EXPIRY_TTL seconds (60, the least the settings
   accept); torn_down_at - expires_at from the database, and every process each sandbox had is
   gone;
4. soak: SOAK_SECONDS of sessions opened at SOAK_RATE a second with a TTL of SOAK_TTL, a share
   ended early with DELETE; then every session must be torn down and no sandbox of the run left.

Targets of the issue: p95 to ready ≤ 300 ms and ≤ 1.5 x the floor's; teardown lag ≤ 60 s; zero
leaked. Exit 1 on any failed request or a count that does not add up; --strict: exit 3 on a
missed target. The figures go to bench/results/previews-*.json (git-ignored).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
LOGS = REPO / "var" / "bench" / "previews"
RESULTS_DIR = REPO / "bench" / "results"
PROBE_FILE = LOGS / "probe.jsonl"
QUEUE = "bench-previews"
KEY_PREFIX_ENV = "BENCH_PREVIEWS_KEY_PREFIX"  # bench/previews/settings.py reads it
FLOOR_MARK = "benchfloor"  # the floor's sandbox ids start with it
TARGET_READY_P95_MS = 300.0
TARGET_READY_RATIO = 1.5
TARGET_TEARDOWN_LAG_S = 60.0
WAIT = "wait=5"
PHASES = ("ready", "memory", "expiry", "soak")

sys.path.insert(0, str(REPO))


class BenchError(Exception):
    pass


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--postgres", default="postgres://postgres@127.0.0.1:5432", help="server, no database")
    add("--database", default="mkp_bench_previews", help="dropped and created")
    add("--redis", default="redis://127.0.0.1:6379", help="server, no database number")
    add("--redis-db", type=int, default=13, help="only keys this run writes are deleted")
    add("--buyers", type=int, default=32)
    add("--sessions", type=int, default=100, help="measured sessions per concurrency")
    add("--concurrency", type=int, nargs="+", default=[1, 4], help="sessions opened at once")
    add("--memory-sessions", type=int, default=20, help="sessions open for the memory reading")
    add("--expiry-sessions", type=int, default=20)
    # 60 s is the least MARKETPLACE_PREVIEW_MAX_TTL_SECONDS the settings accept (and a SKU's
    # shortest preview TTL): the lag is counted from expires_at, whatever the TTL.
    add("--expiry-ttl", type=int, default=60, help="MARKETPLACE_PREVIEW_MAX_TTL_SECONDS, phase 3")
    add("--soak-seconds", type=float, default=180.0)
    add("--soak-rate", type=float, default=1.0, help="sessions opened per second")
    add("--soak-ttl", type=int, default=60, help="MARKETPLACE_PREVIEW_MAX_TTL_SECONDS, soak")
    add("--soak-end-share", type=float, default=0.3, help="share ended early with DELETE")
    add("--web-threads", type=int, default=8, help="gunicorn threads (1 worker, Procfile)")
    add("--worker-concurrency", type=int, default=2, help="prefork processes (Procfile)")
    add(
        "--settings",
        default="bench.previews.settings",
        help="the servers' settings module (a variant of ours, marked in the report)",
    )
    add(
        "--gunicorn-config",
        default="",
        help="a gunicorn config file for the web server (a variant, marked in the report)",
    )
    add("--only", nargs="+", choices=PHASES, default=list(PHASES), help="phases to run")
    add("--strict", action="store_true", help="exit 3 when a target is missed")
    return parser.parse_args()


# --- Processes ---------------------------------------------------------------------------------


@dataclass
class Stack:
    args: argparse.Namespace
    env: dict[str, str]
    port: int
    key_prefix: str
    preview_dir: Path
    data_dir: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    max_ttl: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, name: str, command: list[str], env: dict[str, str]) -> None:
        LOGS.mkdir(parents=True, exist_ok=True)
        with (LOGS / f"{name}.log").open("ab") as out:
            self.processes[name] = subprocess.Popen(
                command,
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self, name: str) -> None:
        process = self.processes.pop(name, None)
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def stop_all(self) -> None:
        for name in reversed(list(self.processes)):
            self.stop(name)

    def web(self, max_ttl: int) -> None:
        """(Re)starts gunicorn with sessions lasting at most `max_ttl` seconds."""
        if "gunicorn" in self.processes and self.max_ttl == max_ttl:
            return
        self.max_ttl = max_ttl
        self.stop("gunicorn")
        env = {**self.env, "MARKETPLACE_PREVIEW_MAX_TTL_SECONDS": str(max_ttl)}
        self.start(
            "gunicorn",
            [
                sys.executable,
                "-m",
                "gunicorn",
                "config.wsgi:application",
                "--bind",
                f"127.0.0.1:{self.port}",
                "--workers",
                "1",
                "--threads",
                str(self.args.web_threads),
                "--log-level",
                "warning",
                *(["-c", self.args.gunicorn_config] if self.args.gunicorn_config else []),
            ],
            env,
        )
        wait_for(lambda: answers(f"{self.base}/health"), "gunicorn did not answer", 60)

    def worker(self) -> None:
        log = LOGS / "worker.log"
        log.unlink(missing_ok=True)
        # The platform's app with the bench's probe (bench/previews/probe.py): when each task
        # was received, and when it ran in a pool process.
        env = {**self.env, "BENCH_PREVIEWS_PROBE": str(PROBE_FILE)}
        PROBE_FILE.unlink(missing_ok=True)
        self.start(
            "worker",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "bench.previews.probe",
                "worker",
                "-Q",
                QUEUE,
                "-n",
                f"{QUEUE}@%h",
                "--concurrency",
                str(self.args.worker_concurrency),
                "--purge",
                "--without-gossip",
                "--without-mingle",
                "--loglevel",
                "INFO",
            ],
            env,
        )
        wait_for(
            lambda: " ready." in log.read_text(errors="replace"),
            "the Celery worker did not start",
            60,
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Any, what: str, timeout: float, every: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(every)
    raise BenchError(f"{what} within {timeout:.0f} s (logs in {LOGS})")


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
            return response.status == 200
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def environment(
    args: argparse.Namespace, key_prefix: str, preview_dir: Path, data_dir: Path
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
        DJANGO_SETTINGS_MODULE=args.settings,
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
        **{KEY_PREFIX_ENV: key_prefix},
        MARKETPLACE_SERVICE_ENV="dev",
        MARKETPLACE_DATABASE_URL=f"{args.postgres.rstrip('/')}/{args.database}",
        MARKETPLACE_REDIS_URL=redis_url,
        MARKETPLACE_BROKER_URL=redis_url,
        MARKETPLACE_CELERY_QUEUE=QUEUE,
        MARKETPLACE_DATA_DIR=str(data_dir),
        MARKETPLACE_ALLOWED_HOSTS="127.0.0.1,localhost",
        MARKETPLACE_PREVIEW_PROVISIONER="local",
        MARKETPLACE_PREVIEW_DIR=str(preview_dir),
        # The limits are not what is measured: out of the way, with buyers taken in turn.
        MARKETPLACE_PREVIEW_CAPACITY="500",
        MARKETPLACE_PREVIEW_MAX_OPEN_PER_BUYER="100",
        MARKETPLACE_PREVIEW_MAX_STARTED_PER_HOUR="100000",
        MARKETPLACE_PREVIEW_MAX_TTL_SECONDS="600",
        MARKETPLACE_THROTTLE_ANON="100000/s",
        MARKETPLACE_THROTTLE_USER="100000/s",
        MARKETPLACE_THROTTLE_BUYER_WRITE="100000/s",
        MARKETPLACE_LOG_LEVEL="WARNING",
    )
    return env


def fresh_database(args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
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
    done = subprocess.run(
        [python, "-m", "bench.previews.seed", "--buyers", str(args.buyers)],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def own_keys_delete(args: argparse.Namespace, key_prefix: str) -> int:
    """Deletes the keys this run wrote (every one starts with its prefix), and no others."""
    import redis

    client = redis.Redis.from_url(f"{args.redis.rstrip('/')}/{args.redis_db}")
    pattern = key_prefix.replace("[", "\\[").replace("*", "\\*").replace("?", "\\?") + ":*"
    keys = list(client.scan_iter(match=pattern, count=1000))
    if keys:
        client.delete(*keys)
    return len(keys)


# --- /proc -------------------------------------------------------------------------------------


def memory_kib(pid: int) -> dict[str, int] | None:
    """RSS, PSS and USS (private) of one process in KiB, from smaps_rollup (RSS alone from
    status where smaps_rollup is missing); None when the process has gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except FileNotFoundError:
        text = ""
    except (ProcessLookupError, PermissionError):
        return None
    fields: dict[str, int] = {}
    source = text.splitlines()[1:] if text else []
    if not source:
        try:
            source = Path(f"/proc/{pid}/status").read_text().splitlines()
        except OSError:
            return None
    for line in source:
        name, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB":
            fields[name.strip()] = int(parts[0])
    rss = fields.get("Rss", fields.get("VmRSS"))
    if rss is None:
        return None
    return {
        "rss": rss,
        "pss": fields.get("Pss", rss),
        "uss": fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0),
    }


def threads_of(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_by_party(stack: Stack) -> dict[str, float]:
    """CPU seconds used so far by the platform's processes: gunicorn (main and workers), the
    Celery worker (main and pool processes, not the sandboxes they run), PostgreSQL (the live
    backends of the bench's database and the server's own processes) and Redis."""
    from bench.procfs import backend_database

    web, worker = stack.processes["gunicorn"].pid, stack.processes["worker"].pid
    used = dict.fromkeys(("gunicorn", "worker", "postgres", "redis"), 0.0)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        pid, comm = int(entry.name), stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rpartition(")")[2].split()
        ppid, cpu = int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        if web in (pid, ppid):
            used["gunicorn"] += cpu
        elif worker in (pid, ppid) and comm != "bwrap":
            used["worker"] += cpu
        elif comm.startswith("postgres"):
            if backend_database(entry) in (stack.args.database, ""):
                used["postgres"] += cpu
        elif comm.startswith("redis-server"):
            used["redis"] += cpu
    return used


def process_cpu(pid: int) -> float:
    """CPU seconds a process has used so far (0 when it has gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks: with the pid, it names one process (pids are
    reused)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[19])


def proc_state(pid: int) -> tuple[str, int, str]:
    """(state letter, parent pid, command name) of a process; ("", 0, "") when it has gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "", 0, ""
    fields = stat.rpartition(")")[2].split()
    return fields[0], int(fields[1]), stat[stat.index("(") + 1 : stat.rindex(")")]


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rpartition(")")[2].split()
            if int(fields[1]) == pid and "bwrap" not in stat.partition(")")[0]:
                found.append(int(entry.name))
    return found


def process_group(stack: Stack, name: str) -> dict[str, int]:
    """RSS, PSS, USS (KiB) and threads of a server: its main process and its direct children
    (the pool's or gunicorn's workers), not the sandboxes the pool processes started."""
    main = stack.processes[name].pid
    total = {"rss": 0, "pss": 0, "uss": 0, "threads": 0, "processes": 0}
    for pid in [main, *children_of(main)]:
        mem = memory_kib(pid)
        if mem is None:
            continue
        for key, value in mem.items():
            total[key] += value
        total["threads"] += threads_of(pid)
        total["processes"] += 1
    return total


# --- The client --------------------------------------------------------------------------------


@dataclass
class Opened:
    id: str
    env_id: str
    token: str
    bearer: str
    sent_at: float  # epoch seconds, when the POST went out
    ready_ms: float  # POST sent -> the answer saying ready
    served_ms: float  # POST sent -> the first 200 of /previews/{token}/
    answered_at: float  # epoch seconds, the answer saying ready
    polls: int  # GETs after the POST until it said ready
    page_retries: int
    get_ms: float = 0.0  # a GET of the ready session afterwards (the API's own cost)


class Client:
    def __init__(self, stack: Stack, seeded: dict[str, Any]) -> None:
        self.base = stack.base
        self.sku = seeded["sku"]
        self.index = seeded["index"].encode()
        self._tokens = itertools.cycle(seeded["tokens"])
        self._lock = threading.Lock()
        self._local = threading.local()
        self.requests = 0

    def _http(self) -> Any:
        import requests

        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            session.trust_env = False  # no proxy variables, no ~/.netrc: loopback only
        return session

    def _bearer(self) -> str:
        with self._lock:
            return next(self._tokens)

    def _count(self) -> None:
        with self._lock:
            self.requests += 1

    def open(self) -> Opened:
        http = self._http()
        bearer = self._bearer()
        auth = {"Authorization": f"Bearer {bearer}", "Prefer": WAIT}
        sent_at = time.time()
        began = time.perf_counter()
        reply = http.post(f"{self.base}/api/v1/skus/{self.sku}/previews", headers=auth, timeout=30)
        self._count()
        if reply.status_code != 201:
            raise BenchError(f"POST previews answered {reply.status_code}: {reply.text[:300]}")
        body = reply.json()
        token, session_id = body["token"], body["id"]
        polls = 0
        while body["status"] in ("requested", "starting"):
            polls += 1
            reply = http.get(f"{self.base}/api/v1/previews/{session_id}", headers=auth, timeout=30)
            self._count()
            if reply.status_code != 200:
                raise BenchError(f"GET preview answered {reply.status_code}: {reply.text[:300]}")
            body = reply.json()
        answered = time.perf_counter()
        answered_at = time.time()
        if body["status"] != "ready":
            raise BenchError(
                f"preview {session_id} is {body['status']} ({body['reason']}: {body['detail']})"
            )
        retries = 0
        while True:
            page = http.get(f"{self.base}/previews/{token}/", timeout=30)
            self._count()
            if page.status_code == 200 and self.index in page.content:
                break
            # After "ready" the page must answer; a 503 (sandbox not answering, still
            # starting) is retried for a second and counted, anything else is a failure.
            if page.status_code != 503 or retries >= 200:
                raise BenchError(
                    f"/previews/{{token}}/ of {session_id} answered {page.status_code}: "
                    f"{page.text[:300]}"
                )
            retries += 1
            time.sleep(0.005)
        served = time.perf_counter()
        opened = Opened(
            id=session_id,
            env_id=session_id.replace("-", ""),
            token=token,
            bearer=bearer,
            sent_at=sent_at,
            ready_ms=1000 * (answered - began),
            served_ms=1000 * (served - began),
            answered_at=answered_at,
            polls=polls,
            page_retries=retries,
        )
        return opened

    def get_ready(self, opened: Opened) -> None:
        """Times a GET of the (ready) session: the API's own cost of an answer, the yardstick
        for the wait's answer."""
        auth = {"Authorization": f"Bearer {opened.bearer}", "Prefer": WAIT}
        began = time.perf_counter()
        reply = self._http().get(
            f"{self.base}/api/v1/previews/{opened.id}", headers=auth, timeout=30
        )
        self._count()
        if reply.status_code != 200 or reply.json()["status"] != "ready":
            raise BenchError(f"GET preview answered {reply.status_code}: {reply.text[:300]}")
        opened.get_ms = 1000 * (time.perf_counter() - began)

    def end(self, opened: Opened) -> None:
        reply = self._http().delete(
            f"{self.base}/api/v1/previews/{opened.id}",
            headers={"Authorization": f"Bearer {opened.bearer}"},
            timeout=30,
        )
        self._count()
        if reply.status_code != 200:
            raise BenchError(f"DELETE preview answered {reply.status_code}: {reply.text[:300]}")


# --- The database ------------------------------------------------------------------------------


def sessions_rows(ids: list[str]) -> list[dict[str, Any]]:
    from previews.models import PreviewSession

    return list(
        PreviewSession.objects.filter(pk__in=ids).values(
            "id",
            "environment_id",
            "status",
            "end_reason",
            "end_detail",
            "created_at",
            "started_at",
            "ready_at",
            "expires_at",
            "ended_at",
            "torn_down_at",
        )
    )


def wait_torn_down(ids: list[str], timeout: float) -> list[dict[str, Any]]:
    """Waits until every session of `ids` is torn down; answers their rows as they are then."""
    from previews.models import PreviewSession, SessionStatus

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = PreviewSession.objects.filter(pk__in=ids).exclude(status=SessionStatus.TORN_DOWN)
        if not left.exists():
            break
        time.sleep(0.02)
    return sessions_rows(ids)


def not_torn_down(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [row for row in rows if row["status"] != "torn_down"]


# --- Figures -----------------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[max(math.ceil(p / 100 * len(ordered)), 1) - 1]


def stats(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": pct(values, 50),
        "p95": pct(values, 95),
        "p99": pct(values, 99),
        "max": max(values) if values else float("nan"),
        "mean": sum(values) / len(values) if values else float("nan"),
    }


def probe_events() -> tuple[dict[str, dict[str, float]], list[tuple[str, str, float, float]]]:
    """From the worker's probe: the times of each session's preview_start task (received,
    prerun, postrun), and every task's run in a pool process as (name, first argument, start,
    end)."""
    starts: dict[str, dict[str, float]] = {}
    by_id: dict[str, dict[str, Any]] = {}
    if PROBE_FILE.exists():
        for line in PROBE_FILE.read_text().splitlines():
            event, at, name, task_id, first, _cpu = json.loads(line)
            task = by_id.setdefault(task_id, {"name": name, "first": str(first)})
            task[event] = at
            if name == "previews.tasks.preview_start" and first:
                starts.setdefault(first, {})[event] = at
    runs = [
        (t["name"], t["first"], t["prerun"], t["postrun"])
        for t in by_id.values()
        if "prerun" in t and "postrun" in t
    ]
    return starts, runs


def task_cpu() -> dict[str, float]:
    """CPU seconds the worker's pool processes have spent in each kind of task so far, from the
    probe (the process's CPU time at the start and the end of each run)."""
    used: dict[str, float] = {}
    if PROBE_FILE.exists():
        runs: dict[str, dict[str, Any]] = {}
        for line in PROBE_FILE.read_text().splitlines():
            event, _at, name, task_id, _first, cpu = json.loads(line)
            if event in ("prerun", "postrun"):
                runs.setdefault(task_id, {"name": name})[event] = cpu
        for run in runs.values():
            if "prerun" in run and "postrun" in run:
                name = run["name"].rsplit(".", 1)[-1]
                used[name] = used.get(name, 0.0) + run["postrun"] - run["prerun"]
    return used


def breakdown(opened: list[Opened]) -> dict[str, Any]:
    """Where the time to ready goes, per session, in ms: the client's clock, the session's
    timestamps (the web's and the worker's clocks: one host) and the worker's probe. Also: how
    much of each start overlapped other tasks running in the worker's other pool process (the
    audit sealer woken by the session's own `preview.created`, teardowns, ...)."""
    rows = {str(row["id"]): row for row in sessions_rows([o.id for o in opened])}
    starts, runs = probe_events()
    parts: dict[str, list[float]] = {
        "web: POST sent -> created_at": [],
        "queue: created_at -> worker received": [],
        "queue: received -> running in the pool": [],
        "queue: running -> started_at": [],
        "start: started_at -> ready_at": [],
        "answer: ready_at -> answer": [],
        "page: answer -> first byte": [],
        "(a GET of a ready session)": [],
        "(task: ready_at -> task done)": [],
    }
    alone: list[float] = []
    overlapped: list[float] = []
    overlap_ms: list[float] = []
    for o in opened:
        row = rows[o.id]
        created = row["created_at"].timestamp()
        started = row["started_at"].timestamp()
        ready = row["ready_at"].timestamp()
        task = starts.get(o.id, {})
        received = task.get("received", math.nan)
        running = task.get("prerun", math.nan)
        values = [
            created - o.sent_at,
            received - created,
            running - received,
            started - running,
            ready - started,
            o.answered_at - ready,
            (o.served_ms - o.ready_ms) / 1000,
            o.get_ms / 1000 if o.get_ms else math.nan,
            task.get("postrun", math.nan) - ready,
        ]
        for name, value in zip(parts, values, strict=True):
            if not math.isnan(value):
                parts[name].append(1000 * value)
        other = sum(
            max(0.0, min(end, ready) - max(begin, started))
            for name, first, begin, end in runs
            if not (name == "previews.tasks.preview_start" and first == o.id)
        )
        overlap_ms.append(1000 * other)
        (overlapped if other > 0 else alone).append(1000 * (ready - started))
    result: dict[str, Any] = {name: stats(values) for name, values in parts.items()}
    result["overlap"] = {
        "sessions_overlapped": len(overlapped),
        "other_tasks_ms": stats(overlap_ms),
        "start_when_alone_ms": stats(alone),
        "start_when_overlapped_ms": stats(overlapped),
    }
    return result


# --- The floor ---------------------------------------------------------------------------------


class Floor:
    """The same command under bubblewrap, started by this process: Sandbox.start + wait_ready
    with the material folder, command and limits the provisioner uses."""

    def __init__(self, stack: Stack, seeded: dict[str, Any]) -> None:
        from django.conf import settings

        from previews import sandbox

        self.sandbox = sandbox
        self.root = stack.preview_dir / "floor"
        self.root.mkdir(mode=0o711, parents=True, exist_ok=True)
        self.root.chmod(0o711)
        self.material = stack.preview_dir / "material" / seeded["digest"]
        self.command = list(seeded["command"])
        self.digest = seeded["digest"]
        self._request_parts: dict[str, Any] | None = None
        self.limits = {
            "memory_bytes": settings.PREVIEW_SANDBOX_MEMORY_BYTES,
            "max_processes": settings.PREVIEW_SANDBOX_PROCESSES,
            "cpu_seconds": settings.PREVIEW_SANDBOX_CPU_SECONDS,
            "tmpfs_bytes": settings.PREVIEW_SANDBOX_TMPFS_BYTES,
        }
        self.ids: list[str] = []
        self.cpu_seconds = 0.0
        self.started = 0

    def one(self) -> float:
        """ms from Sandbox.start to wait_ready's first HTTP answer on the socket."""
        sandbox_id = f"{FLOOR_MARK}-{secrets.token_hex(8)}"
        socket_dir = self.root / sandbox_id
        socket_dir.mkdir(mode=0o700)
        spec = self.sandbox.SandboxSpec(
            material_dir=self.material,
            command=self.command,
            socket_dir=socket_dir,
            ttl_seconds=600,
            **self.limits,
        )
        self.ids.append(sandbox_id)
        began = time.perf_counter()
        box = self.sandbox.Sandbox.start(spec, sandbox_id=sandbox_id)
        ready = box.wait_ready(timeout=10)
        elapsed = 1000 * (time.perf_counter() - began)
        # What the sandbox's processes used to start (read before they stop: the inner ones
        # are not this process's children, so their CPU never reaches its rusage).
        self.cpu_seconds += sum(process_cpu(pid) for pid in self.sandbox.processes_of(sandbox_id))
        self.started += 1
        box.stop()
        shutil.rmtree(socket_dir, ignore_errors=True)
        if not ready:
            raise BenchError(f"the floor's sandbox {sandbox_id} did not answer within 10 s")
        return elapsed

    def provisioner_one(self) -> float:
        """ms of LocalProvisioner.start for a request like a session's, in this process: the
        provisioner's own work on top of the floor, without Celery, the database or the web."""
        from previews.models import PreviewFile, PreviewMaterial
        from previews.provisioners.base import MaterialFile, StartRequest
        from previews.provisioners.local import LocalProvisioner

        if self._request_parts is None:
            material = PreviewMaterial.objects.select_related("sku").get(digest=self.digest)
            files = tuple(
                MaterialFile(path=f.path, storage_key=f.storage_key, sha256=f.sha256, size=f.size)
                for f in PreviewFile.objects.filter(material=material).order_by("path")
            )
            self._request_parts = {
                "sku_slug": material.sku.slug,
                "material_digest": material.digest,
                "material_version": material.version,
                "command": list(material.command),
                "files": files,
            }
        env_id = f"{FLOOR_MARK}-p{secrets.token_hex(8)}"
        request = StartRequest(
            session_id=env_id,
            environment_id=env_id,
            expires_at=time.time() + 600,
            **self._request_parts,
        )
        self.ids.append(env_id)
        provisioner = LocalProvisioner()
        began = time.perf_counter()
        provisioner.start(request, timeout=10)
        elapsed = 1000 * (time.perf_counter() - began)
        provisioner.teardown(env_id)
        return elapsed


def at_once(count: int, work: Any) -> list[Any]:
    """Runs `work()` in `count` threads released together; answers their results."""
    barrier = threading.Barrier(count)

    def run(_: int) -> Any:
        barrier.wait()
        return work()

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(run, range(count)))


def end_all(client: Client, opened: list[Opened]) -> list[dict[str, Any]]:
    """DELETEs the sessions and waits until each is torn down."""
    with ThreadPoolExecutor(max_workers=min(8, len(opened))) as pool:
        list(pool.map(client.end, opened))
    rows = wait_torn_down([o.id for o in opened], timeout=60)
    left = not_torn_down(rows)
    if left:
        raise BenchError(f"{len(left)} ended sessions not torn down within 60 s: {left[:2]}")
    return rows


# --- 1. Time to ready --------------------------------------------------------------------------


def measure_ready(stack: Stack, client: Client, floor: Floor) -> dict[str, Any]:
    args = stack.args
    results: dict[str, Any] = {}
    sides = ("ours", "floor", "provisioner")
    for concurrency in args.concurrency:
        rounds = max(1, math.ceil(args.sessions / concurrency))
        ours: list[Opened] = []
        floors: list[float] = []
        provisioner: list[float] = []
        cpu = dict.fromkeys(("gunicorn", "worker", "postgres", "redis"), 0.0)
        ours_wall = 0.0
        tasks: dict[str, float] = {}
        get_cpu = 0.0
        floor.cpu_seconds, floor.started = 0.0, 0
        # What the servers use doing nothing (the worker's consumer loop, gunicorn's ticks):
        # subtracted from their CPU per session. Not PostgreSQL's: its server processes work
        # for every database of the machine, other jobs' included.
        idle_before, idle_began = cpu_by_party(stack), time.monotonic()
        time.sleep(3)
        idle_after, idle_wall = cpu_by_party(stack), time.monotonic() - idle_began
        idle = {party: (idle_after[party] - idle_before[party]) / idle_wall for party in cpu}
        idle["postgres"] = 0.0
        for index in range(rounds):
            # Each side takes each place in turn, so drift on the machine falls on all.
            shift = index % len(sides)
            for side in sides[shift:] + sides[:shift]:
                if side == "ours":
                    before, batch_began = cpu_by_party(stack), time.monotonic()
                    tasks_before = task_cpu()
                    batch = at_once(concurrency, client.open)
                    after = cpu_by_party(stack)
                    ours_wall += time.monotonic() - batch_began
                    for name, used in task_cpu().items():
                        tasks[name] = tasks.get(name, 0.0) + used - tasks_before.get(name, 0.0)
                    web_before = cpu_by_party(stack)["gunicorn"]
                    for opened in batch:
                        client.get_ready(opened)
                    get_cpu += cpu_by_party(stack)["gunicorn"] - web_before
                    for party in cpu:
                        cpu[party] += after[party] - before[party]
                    end_all(client, batch)
                    ours += batch
                elif side == "floor":
                    floors += at_once(concurrency, floor.one)
                else:
                    provisioner += at_once(concurrency, floor.provisioner_one)
        result = {
            "concurrency": concurrency,
            "ours_ready_ms": stats([o.ready_ms for o in ours]),
            "ours_served_ms": stats([o.served_ms for o in ours]),
            "floor_ms": stats(floors),
            "provisioner_ms": stats(provisioner),
            "breakdown_ms": breakdown(ours),
            # From the POST to the first byte (the teardown is not in it).
            "cpu_ms_per_session": {
                party: 1000 * (used - idle[party] * ours_wall) / len(ours)
                for party, used in cpu.items()
            },
            "idle_cpu_percent": {party: 100 * rate for party, rate in idle.items()},
            # The pool processes' CPU by task (a task that ends after the batch, an audit seal
            # woken by its last commit, falls in the next batch's), and gunicorn's for one GET
            # of a ready session (DRF, authentication, one query, the serializer).
            "worker_tasks_cpu_ms_per_session": {
                name: 1000 * used / len(ours) for name, used in sorted(tasks.items())
            },
            "gunicorn_cpu_ms_per_get": 1000 * get_cpu / len(ours),
            "floor_cpu_ms_per_sandbox": 1000 * floor.cpu_seconds / max(floor.started, 1),
            "polls_after_post": sum(o.polls for o in ours),
            "page_retries": sum(o.page_retries for o in ours),
        }
        results[str(concurrency)] = result
        r, s, f = result["ours_ready_ms"], result["ours_served_ms"], result["floor_ms"]
        print(
            f"  {concurrency} at once, {len(ours)} sessions: ready p50 {r['p50']:.0f} p95 "
            f"{r['p95']:.0f} ms, first byte p50 {s['p50']:.0f} p95 {s['p95']:.0f} ms; floor "
            f"p50 {f['p50']:.0f} p95 {f['p95']:.0f} ms",
            flush=True,
        )
    return results


def warm_up(client: Client, floor: Floor, worker_concurrency: int) -> dict[str, Any]:
    """The first session copies the material from storage and probes bubblewrap (once per
    pool process); then one session per pool process at once so each has started one."""
    first = client.open()
    client.get_ready(first)
    end_all(client, [first])
    cold = breakdown([first])
    for _ in range(2):
        end_all(client, at_once(worker_concurrency, client.open))
    floor.one()
    floor.provisioner_one()
    return {
        "ready_ms": first.ready_ms,
        "served_ms": first.served_ms,
        "breakdown_ms": {name: part["p50"] for name, part in cold.items() if name != "overlap"},
    }


# --- 2. Memory per open session ----------------------------------------------------------------


def sandbox_memory(env_id: str) -> dict[str, int]:
    from previews.sandbox import processes_of

    total = {"rss": 0, "pss": 0, "uss": 0, "processes": 0}
    for pid in processes_of(env_id):
        mem = memory_kib(pid)
        if mem is not None:
            for key, value in mem.items():
                total[key] += value
            total["processes"] += 1
    return total


def measure_memory(stack: Stack, client: Client) -> dict[str, Any]:
    count = stack.args.memory_sessions
    time.sleep(1)
    worker_before = process_group(stack, "worker")
    web_before = process_group(stack, "gunicorn")
    opened: list[Opened] = []
    with ThreadPoolExecutor(max_workers=4) as pool:
        opened = list(pool.map(lambda _: client.open(), range(count)))
    time.sleep(1)  # the servers' first requests answered, their pages touched
    per_session = [sandbox_memory(o.env_id) for o in opened]
    if any(m["processes"] == 0 for m in per_session):
        raise BenchError("an open session's sandbox has no process")
    worker_open = process_group(stack, "worker")
    web_open = process_group(stack, "gunicorn")
    end_all(client, opened)
    time.sleep(1)
    worker_after = process_group(stack, "worker")

    def per(key: str, values: list[dict[str, int]]) -> dict[str, float]:
        series = [v[key] / 1024 for v in values]
        return {"mean": sum(series) / len(series), "min": min(series), "max": max(series)}

    def growth(before: dict[str, int], after: dict[str, int]) -> dict[str, float]:
        return {key: (after[key] - before[key]) / count for key in ("rss", "pss", "threads")}

    return {
        "sessions": count,
        "sandbox_pss_mib": per("pss", per_session),
        "sandbox_rss_mib": per("rss", per_session),
        "sandbox_uss_mib": per("uss", per_session),
        "sandbox_processes": sum(m["processes"] for m in per_session) / count,
        "sandboxes_pss_total_mib": sum(m["pss"] for m in per_session) / 1024,
        "worker_before": worker_before,
        "worker_open": worker_open,
        "worker_after_closing": worker_after,
        "worker_growth_per_session_kib": growth(worker_before, worker_open),
        "worker_left_after_closing_kib": {
            key: worker_after[key] - worker_before[key] for key in ("rss", "pss", "threads")
        },
        "web_growth_per_session_kib": growth(web_before, web_open),
    }


# --- 3. Teardown lag after expiry --------------------------------------------------------------


def measure_expiry(stack: Stack, client: Client) -> dict[str, Any]:
    from previews.sandbox import processes_of

    args = stack.args

    def open_and_note(_: int) -> tuple[Opened, list[tuple[int, int | None]]]:
        opened = client.open()
        return opened, [(pid, start_time(pid)) for pid in processes_of(opened.env_id)]

    with ThreadPoolExecutor(max_workers=4) as pool:
        noted = list(pool.map(open_and_note, range(args.expiry_sessions)))
    ids = [o.id for o, _ in noted]
    rows = wait_torn_down(ids, timeout=args.expiry_ttl + 2 * TARGET_TEARDOWN_LAG_S)
    left = not_torn_down(rows)
    if left:
        raise BenchError(f"{len(left)} expired sessions not torn down: {left[:2]}")
    wrong = [row for row in rows if row["end_reason"] != "expired"]
    if wrong:
        raise BenchError(f"{len(wrong)} sessions ended other than by expiry: {wrong[:2]}")
    lag = [(row["torn_down_at"] - row["expires_at"]).total_seconds() for row in rows]
    end_lag = [(row["ended_at"] - row["expires_at"]).total_seconds() for row in rows]
    survivors = []
    zombies = []
    pool = set(children_of(stack.processes["worker"].pid))
    for opened, pids in noted:
        if not pids:
            raise BenchError(f"the ready session {opened.id} had no sandbox process")
        for pid, started in pids:
            if start_time(pid) != started:
                continue  # gone (or the pid is another process's now)
            state, parent, name = proc_state(pid)
            if state == "Z":
                # Exited, not yet reaped: bwrap's inner process is orphaned when the outer one
                # stops and init reaps it; an outer bwrap killed by the other pool process is
                # reaped by its parent's next teardown (previews.provisioners.local._reap).
                zombies.append(
                    {
                        "session": opened.id,
                        "pid": pid,
                        "parent": parent,
                        "parent_is_pool": parent in pool,
                        "name": name,
                    }
                )
            else:
                survivors.append({"session": opened.id, "pid": pid, "state": state, "name": name})
        if processes_of(opened.env_id):
            survivors.append({"session": opened.id, "processes_of": processes_of(opened.env_id)})
        if (stack.preview_dir / "sockets" / opened.env_id).exists():
            survivors.append({"session": opened.id, "left": "its socket folder"})
    return {
        "sessions": len(rows),
        "ttl_seconds": args.expiry_ttl,
        "teardown_lag_s": stats(lag),
        "end_lag_s": stats(end_lag),
        "processes_noted": sum(len(p) for _, p in noted),
        "survivors": survivors,
        "zombies": zombies,
    }


# --- 4. Soak -----------------------------------------------------------------------------------


def measure_soak(stack: Stack, client: Client, run_env_ids: set[str]) -> dict[str, Any]:
    from previews.sandbox import sandbox_id_of, sandboxes_running
    from previews.services import previews_sweep

    args = stack.args
    total = int(args.soak_seconds * args.soak_rate)
    chooser = random.Random(14)
    early = {
        i: chooser.uniform(1.0, 0.7 * args.soak_ttl)
        for i in range(total)
        if chooser.random() < args.soak_end_share
    }
    opened: list[Opened] = []
    ended: list[str] = []
    failures: list[str] = []
    lock = threading.Lock()
    worker_before = process_group(stack, "worker")
    began = time.monotonic() + 0.5

    def job(index: int) -> None:
        time.sleep(max(0.0, began + index / args.soak_rate - time.monotonic()))
        try:
            session = client.open()
        except Exception as exc:
            with lock:
                failures.append(str(exc))
            return
        with lock:
            opened.append(session)
        if index in early:
            time.sleep(early[index])
            try:
                client.end(session)
            except Exception as exc:
                with lock:
                    failures.append(str(exc))
                return
            with lock:
                ended.append(session.id)

    workers = int(args.soak_rate * args.soak_ttl) + 16
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for future in [pool.submit(job, i) for i in range(total)]:
            future.result()
    soak_wall = time.monotonic() - began
    ids = [o.id for o in opened]
    run_env_ids.update(o.env_id for o in opened)
    rows = sessions_rows(ids)
    deadline = max(row["expires_at"] for row in rows).timestamp() + TARGET_TEARDOWN_LAG_S + 30
    rows = wait_torn_down(ids, timeout=max(1.0, deadline - time.time()))

    def snapshot() -> dict[str, Any]:
        from previews.models import PreviewSession, SessionStatus

        running = {pid: sandbox_id_of(pid) for pid in sandboxes_running()}
        return {
            "sessions_not_torn_down": PreviewSession.objects.exclude(
                status=SessionStatus.TORN_DOWN
            ).count(),
            "run_sandboxes_running": sorted(
                env
                for env in running.values()
                if env in run_env_ids or (env or "").startswith(FLOOR_MARK)
            ),
            "all_marked_sandboxes": len(running),
        }

    before_sweep = snapshot()
    sweep = previews_sweep().as_dict()
    after_sweep = snapshot()
    worker_after = process_group(stack, "worker")
    rows = sessions_rows(ids)
    reasons: dict[str, int] = {}
    for row in rows:
        key = row["end_reason"] or row["status"]
        reasons[key] = reasons.get(key, 0) + 1
    lag = [
        (row["torn_down_at"] - row["expires_at"]).total_seconds()
        for row in rows
        if row["end_reason"] == "expired" and row["torn_down_at"]
    ]
    queue = [1000 * (row["started_at"] - row["created_at"]).total_seconds() for row in rows]
    return {
        "seconds": args.soak_seconds,
        "wall_seconds": soak_wall,
        "rate": args.soak_rate,
        "ttl_seconds": args.soak_ttl,
        "scheduled": total,
        "opened": len(opened),
        "ids": ids,
        "ended_early": len(ended),
        "failures": failures,
        "reasons": reasons,
        "ready_ms": stats([o.ready_ms for o in opened]),
        "served_ms": stats([o.served_ms for o in opened]),
        "breakdown_ms": breakdown(opened),
        "teardown_lag_s": stats(lag),
        "queue_ms": stats(queue),
        "before_sweep": before_sweep,
        "sweep": sweep,
        "after_sweep": after_sweep,
        "worker_before": worker_before,
        "worker_after": worker_after,
    }


# --- Report ------------------------------------------------------------------------------------


def print_report(report: dict[str, Any]) -> dict[str, bool]:
    passed: dict[str, bool] = {}
    options = report["options"]
    if options["settings"] != "bench.previews.settings" or options["gunicorn_config"]:
        print(
            f"\nVARIANT: settings {options['settings']}, gunicorn config "
            f"{options['gunicorn_config'] or '-'}"
        )
    warm = report["warm_up"]
    parts = warm["breakdown_ms"]
    print(
        f"\nthe first session (material copied from storage, bubblewrap probed): ready "
        f"{warm['ready_ms']:.0f} ms, first byte {warm['served_ms']:.0f} ms (start: started_at "
        f"-> ready_at {parts['start: started_at -> ready_at']:.0f} ms)"
    )
    if "ready" in report:
        print_ready(report["ready"], passed)
    if "memory" in report:
        print_memory(report["memory"])
    if "expiry" in report:
        exp = report["expiry"]
        lag = exp["teardown_lag_s"]
        print(
            f"\nteardown after expiry ({exp['sessions']} sessions, TTL {exp['ttl_seconds']} s): "
            f"torn_down_at - expires_at p50 {lag['p50']:.2f} s, p95 {lag['p95']:.2f} s, max "
            f"{lag['max']:.2f} s (ended_at - expires_at p95 {exp['end_lag_s']['p95']:.2f} s); "
            f"{exp['processes_noted']} sandbox processes noted while ready, "
            f"{len(exp['survivors'])} still running after; exited but not reaped yet: "
            f"{sum(1 for z in exp['zombies'] if z['parent'] == 1)} by init (bwrap's inner "
            f"process, orphaned when the outer one stops), "
            f"{sum(1 for z in exp['zombies'] if z['parent_is_pool'])} by a pool process"
        )
        passed[f"teardown lag max ≤ {TARGET_TEARDOWN_LAG_S:.0f} s, every process gone"] = (
            lag["max"] <= TARGET_TEARDOWN_LAG_S and not exp["survivors"]
        )
    if "soak" in report:
        print_soak(report["soak"], passed)
    print()
    for name, ok in passed.items():
        print(f"target {name}: {'PASS' if ok else 'MISS'}")
    return passed


def print_ready(ready: dict[str, Any], passed: dict[str, bool]) -> None:
    print(
        "\ntime to ready (ms, the client's clock; floor: Sandbox.start + wait_ready in this "
        "process; provisioner here: LocalProvisioner.start in this process)"
    )
    print(
        f"  {'at once':>7} {'what':>16} {'p50':>7} {'p95':>7} {'p99':>7} {'max':>7}"
        "   ÷ floor p50, p95"
    )
    for concurrency, result in ready.items():
        floor = result["floor_ms"]
        for name, key in (
            ("ours ready", "ours_ready_ms"),
            ("ours first byte", "ours_served_ms"),
            ("floor", "floor_ms"),
            ("provisioner here", "provisioner_ms"),
        ):
            s = result[key]
            ratio = (
                f"   {s['p50'] / floor['p50']:.2f}, {s['p95'] / floor['p95']:.2f}"
                if key != "floor_ms"
                else ""
            )
            print(
                f"  {concurrency:>7} {name:>16} {s['p50']:7.1f} {s['p95']:7.1f} "
                f"{s['p99']:7.1f} {s['max']:7.1f}{ratio}"
            )
        print(f"  {concurrency:>7} where ours goes, per session (p50 / p95 / mean ms):")
        for name, s in result["breakdown_ms"].items():
            if name != "overlap":
                print(f"  {'':>9}{name:<38} {s['p50']:7.1f} / {s['p95']:7.1f} / {s['mean']:7.1f}")
        overlap = result["breakdown_ms"]["overlap"]
        alone, along = overlap["start_when_alone_ms"], overlap["start_when_overlapped_ms"]
        print(
            f"  {'':>9}starts overlapping another task in the worker: "
            f"{overlap['sessions_overlapped']} of {result['ours_ready_ms']['n']} (other tasks' "
            f"time within the start: mean {overlap['other_tasks_ms']['mean']:.0f} ms); start "
            f"p50 alone {alone['p50']:.0f} ms (n {alone['n']}), overlapped "
            f"{along['p50']:.0f} ms (n {along['n']})"
        )
        cpu = result["cpu_ms_per_session"]
        print(
            f"  {'':>9}CPU ms per session, POST to first byte: "
            + ", ".join(f"{party} {ms:.1f}" for party, ms in cpu.items())
            + f" (idle use subtracted but PostgreSQL's; its backends that ended, each task's "
            f"connection, not counted); the sandbox's own processes to ready (floor): "
            f"{result['floor_cpu_ms_per_sandbox']:.1f}"
        )
        print(
            f"  {'':>9}of the worker's: "
            + ", ".join(
                f"{name} {ms:.1f}" for name, ms in result["worker_tasks_cpu_ms_per_session"].items()
            )
            + f" (the rest: its main process); gunicorn per GET of a ready session "
            f"{result['gunicorn_cpu_ms_per_get']:.1f}"
        )
        print(
            f"  {'':>9}GETs after the POST until ready: {result['polls_after_post']}; page "
            f"retries: {result['page_retries']}"
        )
        p95 = result["ours_ready_ms"]["p95"]
        passed[f"{concurrency} at once: ready p95 ≤ {TARGET_READY_P95_MS:.0f} ms"] = (
            p95 <= TARGET_READY_P95_MS
        )
        passed[f"{concurrency} at once: ready p95 ≤ {TARGET_READY_RATIO} x the floor's"] = (
            p95 <= TARGET_READY_RATIO * floor["p95"]
        )


def print_memory(mem: dict[str, Any]) -> None:
    g = mem["worker_growth_per_session_kib"]
    left = mem["worker_left_after_closing_kib"]
    pss = mem["sandbox_pss_mib"]
    print(
        f"\nmemory, {mem['sessions']} sessions open: per sandbox PSS {pss['mean']:.2f} MiB "
        f"(min {pss['min']:.2f}, max {pss['max']:.2f}), RSS {mem['sandbox_rss_mib']['mean']:.2f}"
        f" MiB, private {mem['sandbox_uss_mib']['mean']:.2f} MiB, "
        f"{mem['sandbox_processes']:.1f} processes; all {mem['sessions']}: "
        f"{mem['sandboxes_pss_total_mib']:.1f} MiB PSS\n"
        f"  worker (main + {mem['worker_open']['processes'] - 1} pool processes) per open "
        f"session: RSS +{g['rss']:.0f} KiB, PSS +{g['pss']:.0f} KiB, threads +{g['threads']:.1f};"
        f" after closing them all: RSS {left['rss']:+d} KiB, threads {left['threads']:+d}\n"
        f"  gunicorn per open session: RSS +{mem['web_growth_per_session_kib']['rss']:.0f} KiB"
    )


def print_soak(soak: dict[str, Any], passed: dict[str, bool]) -> None:
    before, after = soak["before_sweep"], soak["after_sweep"]
    queue = soak["queue_ms"]["p50"]
    queue95 = soak["queue_ms"]["p95"]
    print(
        f"\nsoak: {soak['opened']} sessions in {soak['wall_seconds']:.0f} s ({soak['rate']:g}/s, "
        f"TTL {soak['ttl_seconds']} s), {soak['ended_early']} ended early by DELETE; ends "
        f"{soak['reasons']}; ready p50 {soak['ready_ms']['p50']:.0f} p95 "
        f"{soak['ready_ms']['p95']:.0f} ms, first byte p95 {soak['served_ms']['p95']:.0f} ms; "
        f"teardown lag after expiry p95 {soak['teardown_lag_s']['p95']:.2f} s, max "
        f"{soak['teardown_lag_s']['max']:.2f} s\n"
        f"  where ready goes, p50 / p95 ms: "
        + "; ".join(
            f"{name.split(':')[0]} {part['p50']:.0f} / {part['p95']:.0f}"
            for name, part in soak["breakdown_ms"].items()
            if name.split(":")[0] in ("web", "start", "answer")
        )
        + f"; queue {queue:.0f} / {queue95:.0f} (created_at -> started_at)\n"
        f"  before the sweep: {before['sessions_not_torn_down']} sessions not torn down, "
        f"{len(before['run_sandboxes_running'])} of the run's sandboxes running "
        f"({before['all_marked_sandboxes']} marked sandboxes on the host)\n"
        f"  previews_sweep(), called once by the runner: {soak['sweep']}\n"
        f"  after the sweep: {after['sessions_not_torn_down']} sessions not torn down, "
        f"{len(after['run_sandboxes_running'])} of the run's sandboxes running "
        f"({after['all_marked_sandboxes']} marked sandboxes on the host)\n"
        f"  worker RSS {soak['worker_before']['rss'] / 1024:.1f} -> "
        f"{soak['worker_after']['rss'] / 1024:.1f} MiB, threads "
        f"{soak['worker_before']['threads']} -> {soak['worker_after']['threads']}"
    )
    passed["soak: zero leaked by the sessions' own tasks (before the sweep)"] = (
        not before["run_sandboxes_running"] and before["sessions_not_torn_down"] == 0
    )
    passed["soak: zero leaked after the sweep"] = (
        not after["run_sandboxes_running"] and after["sessions_not_torn_down"] == 0
    )


def check_counts(report: dict[str, Any], all_ids: list[str], floor: Floor) -> list[str]:
    """What must add up: every session of the run torn down, ended as the run ended it (no
    failure), audited at each step; the soak's requests all answered; no sandbox of the run (nor
    of the floor) left running."""
    from audit.models import AuditEvent
    from previews.sandbox import sandbox_id_of, sandboxes_running

    problems = []
    soak = report.get("soak")
    if soak:
        if soak["failures"]:
            problems.append(
                f"soak: {len(soak['failures'])} failed requests: {soak['failures'][:3]}"
            )
        if soak["opened"] != soak["scheduled"]:
            problems.append(f"soak: {soak['opened']} of {soak['scheduled']} sessions opened")
        reasons = soak["reasons"]
        if reasons.get("ended", 0) != soak["ended_early"] or sum(reasons.values()) != len(
            soak["ids"]
        ):
            problems.append(f"soak: ends {reasons} do not match {soak['ended_early']} DELETEs")
        if set(reasons) - {"ended", "expired"}:
            problems.append(f"soak: sessions ended otherwise than by DELETE or expiry: {reasons}")
    rows = sessions_rows(all_ids)
    if len(rows) != len(all_ids):
        problems.append(f"{len(all_ids)} sessions opened, {len(rows)} in the database")
    left = not_torn_down(rows)
    if left:
        problems.append(f"{len(left)} sessions of the run not torn down")
    failed = [row for row in rows if row["end_reason"] == "failed"]
    if failed:
        problems.append(f"{len(failed)} sessions failed: {failed[0]['end_detail']}")
    actions = ("preview.created", "preview.ready", "preview.ended", "preview.torn_down")
    counts = {
        action: AuditEvent.objects.filter(
            action=action, subject_type="preview", subject_id__in=all_ids
        ).count()
        for action in actions
    }
    report["audit_events"] = counts
    for action, count in counts.items():
        if count != len(all_ids):
            problems.append(f"{count} {action} audit events for {len(all_ids)} sessions")
    ours = {i.replace("-", "") for i in all_ids} | set(floor.ids)
    running = [sandbox_id_of(pid) for pid in sandboxes_running()]
    report["run_sandboxes_left"] = sorted(env for env in running if env in ours)
    if report["run_sandboxes_left"]:
        problems.append(f"{len(report['run_sandboxes_left'])} sandboxes of the run still run")
    return problems


def main() -> int:
    args = parse_args()
    from previews.sandbox import available

    if reason := available():
        raise BenchError(f"sandboxes cannot run here: {reason}")
    run_id = secrets.token_hex(4)
    key_prefix = f"bench-previews-{run_id}"
    # Short (a socket path is at most 107 bytes) and under /tmp, whose parents are o+x.
    preview_dir = Path(f"/tmp/mkp-bp-{run_id}")  # noqa: S108 - the run's own folder
    data_dir = Path(f"/tmp/mkp-bp-data-{run_id}")  # noqa: S108
    env = environment(args, key_prefix, preview_dir, data_dir)
    stack = Stack(args, env, free_port(), key_prefix, preview_dir, data_dir)
    started = time.monotonic()
    report: dict[str, Any] = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "options": vars(args),
    }
    all_ids: list[str] = []
    try:
        print(
            f"database {args.database}: dropping, creating, migrating, seeding; Redis "
            f"database {args.redis_db}, keys {key_prefix}:*; {preview_dir}",
            flush=True,
        )
        seeded = fresh_database(args, env)
        # This process reads the database, starts the floor's sandboxes and calls the sweep
        # with the servers' settings.
        for name in [k for k in os.environ if k.startswith("MARKETPLACE_")]:
            del os.environ[name]
        os.environ.update(env)
        import django

        django.setup()
        for name in ("gunicorn", "worker"):
            (LOGS / f"{name}.log").unlink(missing_ok=True)
        stack.worker()
        stack.web(max_ttl=600)
        client = Client(stack, seeded)
        tracked = TrackingClient(client, all_ids)
        floor = Floor(stack, seeded)
        print(f"set up in {time.monotonic() - started:.0f} s; warm-up ...", flush=True)
        report["warm_up"] = warm_up(tracked, floor, args.worker_concurrency)
        if "ready" in args.only:
            print("time to ready ...", flush=True)
            report["ready"] = measure_ready(stack, tracked, floor)
        if "memory" in args.only:
            print("memory ...", flush=True)
            report["memory"] = measure_memory(stack, tracked)
        if "expiry" in args.only:
            print(f"teardown after expiry (TTL {args.expiry_ttl} s) ...", flush=True)
            stack.web(max_ttl=args.expiry_ttl)
            report["expiry"] = measure_expiry(stack, tracked)
        if "soak" in args.only:
            print(
                f"soak ({args.soak_seconds:.0f} s at {args.soak_rate:g}/s, TTL "
                f"{args.soak_ttl} s) ...",
                flush=True,
            )
            stack.web(max_ttl=args.soak_ttl)
            run_env_ids = {i.replace("-", "") for i in all_ids}
            report["soak"] = measure_soak(stack, tracked, run_env_ids)
        report["requests"] = client.requests
        problems = check_counts(report, all_ids, floor)
    finally:
        stack.stop_all()
        deleted = own_keys_delete(args, key_prefix)
        shutil.rmtree(preview_dir, ignore_errors=True)
        shutil.rmtree(data_dir, ignore_errors=True)
        print(
            f"deleted the run's {deleted} Redis keys ({key_prefix}:*) and {preview_dir}", flush=True
        )
    passed = print_report(report)
    report["targets"] = passed
    report["problems"] = problems
    report["seconds"] = time.monotonic() - started
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    saved = RESULTS_DIR / f"previews-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    saved.write_text(json.dumps(report, indent=2, default=str))
    print(
        f"{report['requests']} requests, {len(all_ids)} sessions; run took "
        f"{report['seconds']:.0f} s; saved {saved.relative_to(REPO)}"
    )
    if problems:
        for problem in problems:
            print(f"bench: {problem}", file=sys.stderr)
        return 1
    return 3 if args.strict and not all(passed.values()) else 0


class TrackingClient:
    """The client, noting the id of every session it opens (for the final counts)."""

    def __init__(self, client: Client, ids: list[str]) -> None:
        self._client = client
        self._ids = ids
        self._lock = threading.Lock()

    def open(self) -> Opened:
        opened = self._client.open()
        with self._lock:
            self._ids.append(opened.id)
        return opened

    def get_ready(self, opened: Opened) -> None:
        self._client.get_ready(opened)

    def end(self, opened: Opened) -> None:
        self._client.end(opened)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        sys.exit(1)
