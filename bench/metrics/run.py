"""Benchmark: the API's p95 while six scrapers read the metrics, before and now, side by side.

    .venv/bin/python -m bench.metrics.run           # from the repository root, about 6 minutes

What it does, in order:
1. migrates a database of its own on the embedded defaults (SQLite in var/bench/metrics, as
   scripts/demo runs) and loads the demo catalog into it (`load_demo_data`) once;
2. starts gunicorn as the Procfile does (`--workers 1 --threads 8`), with
   PROMETHEUS_MULTIPROC_DIR set to an empty folder as scripts/demo sets it, and
   DJANGO_SETTINGS_MODULE=bench.metrics.settings, whose URLconf also serves the metrics as they
   were served before (django-prometheus's view, open, rendering on every scrape); and
   `manage.py metrics_serve`, the metrics' listener of their own, on another port;
3. sends one request to each of the platform's pages, so that the metrics hold the series
   a running platform holds (a series per view, status and method);
4. measures the API (GET /api/v1/skus, the demo catalog's first page) under a steady load:
   4 connections, each pausing 40 ms between requests (about 90 requests/s, well below what
   the server can answer, so that its p95 shows interference and not saturation), in each
   scenario, the scenarios' rounds interleaved (a different order each round) so that drift
   on the machine falls on all alike:
   - idle: no scraper;
   - before: 6 scrapers on the view as it was (anonymous, open);
   - token: 6 scrapers on /metrics with the token (in the web process);
   - anonymous: 6 scrapers on /metrics without a token (each a 401);
   - port: 6 scrapers, with the token, on metrics_serve's port;
   each scraper scraping every 100 ms (60 scrapes a second in all: 150 times six Prometheus
   servers at the default 15 s), and again back to back (the `-flood` scenarios: as fast as
   the server answers, the worst a scraper, or a flood of them, can do);
5. prints the CPU one scrape costs each way (one at a time, before the rounds), the API's p50,
   p95 and p99 in each scenario (the rounds' histograms merged), p95 over idle's (and, for
   information, the median of each round's over the same round's idle), the scrapes answered
   per second, the CPU each process used, and PASS/FAIL against the issue's target: six
   scrapers (token and port, every 100 ms) leave the API's p95 within 20 % of idle; writes the
   figures to bench/results/.

The limit on /metrics per address (MARKETPLACE_THROTTLE_METRICS, 120/min) is raised out of the
way, as are the API's: what is measured is the cost of answering a scrape, not the limiter's
refusals.

Requirements: wrk on PATH (`apt-get install -y wrk`), the platform in .venv. It touches only
var/bench/metrics (database, files, the metrics folder, logs) and loopback ports it picks.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
RESULTS_DIR = REPO / "bench" / "results"
LUA = HERE / "load.lua"

API_PATH = "/api/v1/skus"
BEFORE_PATH = "/bench/before/metrics"  # bench/metrics/urls.py
TARGET_P95_RATIO = 1.2
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

IDLE, BEFORE, TOKEN, ANONYMOUS, PORT = "idle", "before", "token", "anonymous", "port"
FLOOD = "-flood"  # the same scrapers, back to back
TARGETS = (BEFORE, TOKEN, ANONYMOUS, PORT)
SCENARIOS = (IDLE, *TARGETS, *(f"{name}{FLOOD}" for name in TARGETS))
WHAT = {
    IDLE: "no scraper",
    BEFORE: "django-prometheus's view, open, rendered per scrape",
    TOKEN: "/metrics with the token (web process, cached rendering)",
    ANONYMOUS: "/metrics without a token (401)",
    PORT: "metrics_serve's port with the token (its own process)",
}

# Pages that leave series of their own in the metrics (one per view, status and method).
WARM_PATHS = (
    "/", "/health", "/api/v1/skus", "/api/v1/skus?page_size=5", "/api/v1/categories",
    "/api/v1/partners", "/api/schema/", "/api/docs/", "/.well-known/jwks.json", "/admin/",
    "/admin/login/", "/api/v1/orders", "/api/v1/me", "/no-such-page", "/api/v1/skus/no-such-sku",
    "/checkout/success", "/checkout/cancelled",
)  # fmt: skip


class BenchError(Exception):
    pass


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="The API's p95 idle and with six scrapers: before, and now.",
    )
    add = parser.add_argument
    add("--scrapers", type=int, default=6, help="concurrent scrapers")
    add(
        "--scrape-delay-ms",
        type=int,
        default=100,
        help="pause of each scraper between scrapes (the -flood scenarios pause none)",
    )
    add("--api-connections", type=int, default=4)
    add("--api-delay-ms", type=int, default=40, help="pause between requests per connection")
    add("--duration", type=int, default=10, help="seconds of API load per round and scenario")
    add("--rounds", type=int, default=3)
    add("--warmup", type=int, default=3, help="seconds of API load before the rounds")
    add(
        "--cache-seconds",
        type=float,
        default=None,
        help="MARKETPLACE_METRICS_CACHE_SECONDS (unset: the platform's default)",
    )
    add(
        "--only",
        nargs="+",
        choices=SCENARIOS[1:],
        help="measure these scenarios only (and idle)",
    )
    add("--serial-scrapes", type=int, default=300, help="scrapes one at a time, for their CPU")
    add("--threads", type=int, default=8, help="gunicorn threads (the Procfile's 8)")
    add("--nice", type=int, default=10, help="metrics_serve's --nice")
    add("--data-dir", default=str(REPO / "var" / "bench" / "metrics"))
    add("--no-save", action="store_true", help="do not write bench/results/*.json")
    add("--strict", action="store_true", help="exit 3 when the target is missed")
    return parser.parse_args()


def bench_env(args: argparse.Namespace, token: str) -> dict[str, str]:
    # An inherited MARKETPLACE_* variable would change what is measured: the bench sets every
    # one it depends on and drops the rest.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MARKETPLACE_")
        and k not in ("DJANGO_SETTINGS_MODULE", "PROMETHEUS_MULTIPROC_DIR")
    }
    fast = "100000/s"  # never reached: the limiter is not what is measured
    env.update(
        DJANGO_SETTINGS_MODULE="bench.metrics.settings",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        MARKETPLACE_SERVICE_ENV="dev",
        MARKETPLACE_DATA_DIR=args.data_dir,
        MARKETPLACE_METRICS_TOKEN=token,
        MARKETPLACE_THROTTLE_ANON=fast,
        MARKETPLACE_THROTTLE_USER=fast,
        MARKETPLACE_THROTTLE_METRICS=fast,
        MARKETPLACE_THROTTLE_HEALTH=fast,
        MARKETPLACE_LOG_LEVEL="WARNING",
    )
    if args.cache_seconds is not None:
        env["MARKETPLACE_METRICS_CACHE_SECONDS"] = str(args.cache_seconds)
    return env


def prepare(env: dict[str, str], data_dir: Path) -> None:
    python = sys.executable
    subprocess.run([python, "manage.py", "migrate", "--noinput", "-v", "0"], env=env, check=True)
    marker = data_dir / "demo-data-loaded"
    if not marker.exists():
        subprocess.run(
            [python, "manage.py", "load_demo_data"], env=env, check=True, stdout=subprocess.DEVNULL
        )
        marker.touch()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        # A session of its own, so that it can be stopped with its children and nothing else.
        return subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def get(port: int, path: str, authorization: str | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Authorization": authorization} if authorization else {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_answering(proc: subprocess.Popen[bytes], port: int, path: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{proc.args[:4]} exited with {proc.returncode}; see {log}")
        try:
            get(port, path)
            return
        except OSError:
            time.sleep(0.25)
    raise BenchError(f"nothing answered on port {port} within 60 s; see {log}")


# --- CPU ---------------------------------------------------------------------------------------


def cpu_seconds(root: int) -> float:
    """CPU seconds used so far by a process and its children still running."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if int(entry.name) == root or int(fields[1]) == root:
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


def machine_busy_seconds() -> float:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


# --- wrk ---------------------------------------------------------------------------------------


def wrk(url: str, connections: int, seconds: int) -> list[str]:
    """The command; the pause and the header go in the environment (wrk_env)."""
    return [
        "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s",
        "-s", str(LUA), url,
    ]  # fmt: skip


def wrk_env(delay_ms: int, auth: str | None) -> dict[str, str]:
    return {**os.environ, "BENCH_DELAY_MS": str(delay_ms), "BENCH_AUTH": auth or ""}


def report_of(done: subprocess.CompletedProcess[str] | tuple[str, str, int]) -> dict[str, Any]:
    stdout, stderr, code = (
        (done.stdout, done.stderr, done.returncode)
        if isinstance(done, subprocess.CompletedProcess)
        else done
    )
    if code != 0:
        raise BenchError(f"wrk failed ({code}): {stderr.strip()}")
    line = next((x for x in stdout.splitlines() if x.startswith("BENCH-JSON ")), None)
    if line is None:
        raise BenchError(f"wrk printed no report:\n{stdout}\n{stderr}")
    return json.loads(line.removeprefix("BENCH-JSON "))


def percentile_ms(histogram: list[list[int]], p: float) -> float:
    merged: dict[int, int] = {}
    for value, count in histogram:
        merged[value] = merged.get(value, 0) + count
    wanted = p / 100 * sum(merged.values())
    seen = 0
    for value in sorted(merged):
        seen += merged[value]
        if seen >= wanted:
            return value / 1000
    return float("nan")


@dataclass
class Round:
    scenario: str
    round: int
    api: dict[str, Any]
    scrapes: dict[str, Any] | None
    cpu_s: dict[str, float] = field(default_factory=dict)


@dataclass
class Setup:
    web_port: int
    metrics_port: int
    token: str
    web_pid: int
    metrics_pid: int

    def scrape_target(self, scenario: str) -> tuple[str, str | None, bool] | None:
        """(URL, Authorization, whether each answer is a 200) of a scenario's scrapers."""
        web, bearer = f"http://127.0.0.1:{self.web_port}", f"Bearer {self.token}"
        return {
            IDLE: None,
            BEFORE: (f"{web}{BEFORE_PATH}", None, True),
            TOKEN: (f"{web}/metrics", bearer, True),
            ANONYMOUS: (f"{web}/metrics", None, False),
            PORT: (f"http://127.0.0.1:{self.metrics_port}/metrics", bearer, True),
        }[scenario.removesuffix(FLOOD)]


def check(name: str, report: dict[str, Any], expect_2xx: bool) -> None:
    errors = {k: v for k, v in report["errors"].items() if v and k != "status"}
    if errors:
        raise BenchError(f"{name}: {errors} out of {report['requests']} requests")
    if report["requests"] == 0:
        raise BenchError(f"{name}: no request completed")
    non_2xx = report["errors"]["status"]
    if expect_2xx and non_2xx:
        raise BenchError(f"{name}: {non_2xx} of {report['requests']} answers were not 2xx")
    if not expect_2xx and non_2xx != report["requests"]:
        raise BenchError(f"{name}: {report['requests'] - non_2xx} answers were 2xx, not 401")


def run_round(args: argparse.Namespace, setup: Setup, scenario: str, n: int) -> Round:
    api_url = f"http://127.0.0.1:{setup.web_port}{API_PATH}"
    target = setup.scrape_target(scenario)
    scraper = None
    if target is not None:
        url, auth, _ = target
        pause = 0 if scenario.endswith(FLOOD) else args.scrape_delay_ms
        scraper = subprocess.Popen(
            wrk(url, args.scrapers, args.duration + 2),
            env=wrk_env(pause, auth),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1)  # the scrapers are at it before the API's load starts
    before = {
        "gunicorn": cpu_seconds(setup.web_pid),
        "metrics_serve": cpu_seconds(setup.metrics_pid),
        "machine": machine_busy_seconds(),
    }
    done = subprocess.run(
        wrk(api_url, args.api_connections, args.duration),
        env=wrk_env(args.api_delay_ms, None),
        capture_output=True,
        text=True,
        check=False,
    )
    cpu = {
        "gunicorn": cpu_seconds(setup.web_pid) - before["gunicorn"],
        "metrics_serve": cpu_seconds(setup.metrics_pid) - before["metrics_serve"],
        "machine": machine_busy_seconds() - before["machine"],
    }
    api = report_of(done)
    check(f"{scenario}: the API", api, expect_2xx=True)
    scrapes = None
    if scraper is not None and target is not None:
        out, err = scraper.communicate(timeout=args.duration + 30)
        scrapes = report_of((out, err, scraper.returncode))
        check(f"{scenario}: the scrapers", scrapes, expect_2xx=target[2])
    r = Round(scenario=scenario, round=n, api=api, scrapes=scrapes, cpu_s=cpu)
    print(
        f"round {n} {scenario:<15} API p50 {percentile_ms(api['histogram'], 50):6.2f} ms"
        f"  p95 {percentile_ms(api['histogram'], 95):6.2f} ms"
        + (
            f"  | {scrapes['requests'] / (scrapes['duration_us'] / 1e6):7.1f} scrapes/s"
            if scrapes
            else ""
        ),
        flush=True,
    )
    return r


def cpu_per_scrape(setup: Setup, count: int) -> dict[str, dict[str, float]]:
    """CPU milliseconds of the web server and of metrics_serve per scrape, one scrape at a
    time on a quiet server: what each way of answering costs by itself. The first scrape
    after a pause renders; with the cache the others reuse it, as under load."""
    cost: dict[str, dict[str, float]] = {}
    for name in TARGETS:
        target = setup.scrape_target(name)
        assert target is not None
        url = urlsplit(target[0])
        web, metrics = cpu_seconds(setup.web_pid), cpu_seconds(setup.metrics_pid)
        for _ in range(count):
            get(url.port or 80, url.path, target[1])
        cost[name] = {
            "web": 1000 * (cpu_seconds(setup.web_pid) - web) / count,
            "metrics_serve": 1000 * (cpu_seconds(setup.metrics_pid) - metrics) / count,
        }
    return cost


@dataclass
class Summary:
    scenario: str
    api_requests: int
    api_rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    scrapes_per_s: float | None
    cpu_pct: dict[str, float]  # of one core, during the API's load


def summarize(rounds: list[Round], scenario: str) -> Summary:
    mine = [r for r in rounds if r.scenario == scenario]
    histogram = [pair for r in mine for pair in r.api["histogram"]]
    requests = sum(r.api["requests"] for r in mine)
    seconds = sum(r.api["duration_us"] for r in mine) / 1e6
    scrapes = [r.scrapes for r in mine if r.scrapes]
    cpu = {
        name: 100 * sum(r.cpu_s[name] for r in mine) / seconds
        for name in ("gunicorn", "metrics_serve", "machine")
    }
    return Summary(
        scenario=scenario,
        api_requests=requests,
        api_rps=requests / seconds,
        p50_ms=percentile_ms(histogram, 50),
        p95_ms=percentile_ms(histogram, 95),
        p99_ms=percentile_ms(histogram, 99),
        scrapes_per_s=(
            sum(s["requests"] for s in scrapes) / (sum(s["duration_us"] for s in scrapes) / 1e6)
            if scrapes
            else None
        ),
        cpu_pct=cpu,
    )


def round_ratios(rounds: list[Round], scenario: str) -> list[float]:
    """Each round's p95 of the scenario over the same round's idle p95."""
    idle = {r.round: percentile_ms(r.api["histogram"], 95) for r in rounds if r.scenario == IDLE}
    return [
        percentile_ms(r.api["histogram"], 95) / idle[r.round]
        for r in rounds
        if r.scenario == scenario
    ]


def print_report(
    args: argparse.Namespace,
    info: dict[str, Any],
    summaries: dict[str, Summary],
    rounds: list[Round],
) -> dict[str, Any]:
    idle = summaries[IDLE]
    print()
    print(
        f"bench/metrics: the API's GET {API_PATH} ({args.api_connections} connections,"
        f" {args.api_delay_ms} ms apart) while {args.scrapers} scrapers read the metrics,"
        f" each every {args.scrape_delay_ms} ms, or back to back (-flood)"
    )
    print(
        f"  gunicorn --workers 1 --threads {args.threads} (the Procfile's), SQLite, the demo"
        f" catalog, PROMETHEUS_MULTIPROC_DIR set | {args.rounds} rounds x {args.duration} s per"
        f" scenario, interleaved | the exposition: {info['exposition_lines']} lines,"
        f" {info['exposition_bytes']} B"
    )
    v = info["versions"]
    print(f"  {v['cpus']} CPUs | Python {v['python']} | load average before: {info['load_before']}")
    print(
        "  CPU ms per scrape, one at a time (web server + metrics_serve): "
        + ", ".join(
            f"{name} {c['web']:.2f} + {c['metrics_serve']:.2f}"
            for name, c in info["cpu_ms_per_scrape"].items()
        )
    )
    print()
    print(
        f"  {'scenario':<16}{'API req/s':>10}{'p50 ms':>8}{'p95 ms':>8}{'p99 ms':>8}"
        f"{'p95/idle':>9}{'scrapes/s':>10}  | CPU, % of a core: {'web':>4}{'metrics':>8}"
        f"{'machine':>8}  | the scrapers read"
    )
    verdicts: dict[str, Any] = {}
    for name in summaries:
        s = summaries[name]
        ratio = s.p95_ms / idle.p95_ms
        median = statistics.median(round_ratios(rounds, name))
        verdicts[name] = {
            "p95_ratio": ratio,
            "p95_ratio_median_of_rounds": median,
            "met": ratio <= TARGET_P95_RATIO,
        }
        print(
            f"  {name:<16}{s.api_rps:>10.1f}{s.p50_ms:>8.2f}{s.p95_ms:>8.2f}{s.p99_ms:>8.2f}"
            f"{ratio:>9.2f}{(s.scrapes_per_s or 0):>10.1f}  | {'':18}"
            f"{s.cpu_pct['gunicorn']:>4.0f}{s.cpu_pct['metrics_serve']:>8.0f}"
            f"{s.cpu_pct['machine']:>8.0f}  | {WHAT[name.removesuffix(FLOOD)]}"
        )
    print()
    print(
        "  the API's p95 with the scrapers over idle's (1.00: no effect), all rounds merged |"
        " median of the rounds' own (each round's over the same round's idle):"
    )
    print(
        f"  {'':16}{'before':>10}{'token':>10}{'anonymous':>10}{'port':>10}  |"
        + " " * 10
        + f"{'before':>10}{'token':>10}{'anonymous':>10}{'port':>10}"
    )

    def cell(name: str, key: str) -> str:
        return f"{verdicts[name][key]:>10.2f}" if name in verdicts else f"{'-':>10}"

    for suffix, label in (("", f"every {args.scrape_delay_ms} ms"), (FLOOD, "back to back")):
        merged = "".join(cell(f"{t}{suffix}", "p95_ratio") for t in TARGETS)
        median = "".join(cell(f"{t}{suffix}", "p95_ratio_median_of_rounds") for t in TARGETS)
        print(f"  {label:<16}{merged}  |{' ' * 10}{median}")
    print()
    for name in (n for n in (TOKEN, PORT) if n in verdicts):
        met = verdicts[name]["met"]
        print(
            f"  target: {args.scrapers} scrapers ({name}, each every {args.scrape_delay_ms} ms)"
            f" leave the API's p95 within {100 * (TARGET_P95_RATIO - 1):.0f} % of idle:"
            f" {'PASS' if met else 'FAIL'} ({verdicts[name]['p95_ratio']:.2f})"
        )
    return verdicts


def save(
    args: argparse.Namespace, info: dict[str, Any], rounds: list[Round], summaries: dict, verdicts
) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / f"metrics-{stamp}.json"
    document = {
        "bench": "metrics",
        "at": stamp,
        "config": {k: v for k, v in vars(args).items() if k not in ("no_save", "strict")},
        "info": info,
        "summary": {name: asdict(s) for name, s in summaries.items()},
        "verdicts": verdicts,
        "rounds": [
            {
                "scenario": r.scenario,
                "round": r.round,
                "api_requests": r.api["requests"],
                "p95_ms": percentile_ms(r.api["histogram"], 95),
                "scrapes": r.scrapes and r.scrapes["requests"],
                "cpu_s": r.cpu_s,
            }
            for r in rounds
        ],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def main() -> int:
    args = parse_args()
    if shutil.which("wrk") is None:
        print("bench/metrics needs wrk on PATH: apt-get install -y wrk", file=sys.stderr)
        return 2
    os.chdir(REPO)
    data_dir = Path(args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    scenarios = (IDLE, *args.only) if args.only else SCENARIOS
    env = bench_env(args, token)
    prepare(env, data_dir)

    # An empty folder at start, shared by the web server and the metrics' own listener.
    multiproc = data_dir / "multiproc"
    shutil.rmtree(multiproc, ignore_errors=True)
    multiproc.mkdir()
    env["PROMETHEUS_MULTIPROC_DIR"] = str(multiproc)
    web_port, metrics_port = free_port(), free_port()
    web_log, metrics_log = data_dir / "gunicorn.log", data_dir / "metrics_serve.log"
    web = start(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "config.wsgi",
            "--bind",
            f"127.0.0.1:{web_port}",
            "--workers",
            "1",
            "--threads",
            str(args.threads),
            "--graceful-timeout",
            "5",
            "--no-control-socket",
            "--log-level",
            "warning",
        ],
        env,
        web_log,
    )
    metrics = start(
        [sys.executable, "manage.py", "metrics_serve", "--nice", str(args.nice)],
        {**env, "MARKETPLACE_METRICS_PORT": str(metrics_port)},
        metrics_log,
    )
    try:
        wait_answering(web, web_port, "/health", web_log)
        wait_answering(metrics, metrics_port, "/metrics", metrics_log)
        setup = Setup(web_port, metrics_port, token, web.pid, metrics.pid)
        for path in WARM_PATHS:
            get(web_port, path)
        status, body = get(web_port, "/metrics", f"Bearer {token}")
        if status != 200 or b"marketplace_catalog_cache_requests_total" not in body:
            raise BenchError(f"/metrics with the token answered {status}")
        for name in scenarios:
            target = setup.scrape_target(name)
            if target:
                url = urlsplit(target[0])
                status, _ = get(url.port or 80, url.path, target[1])
                if status != (200 if target[2] else 401):
                    raise BenchError(f"{name}: the scrapers' URL answered {status}")
        cost = cpu_per_scrape(setup, args.serial_scrapes)
        info: dict[str, Any] = {
            "cpu_ms_per_scrape": cost,
            "exposition_lines": body.count(b"\n"),
            "exposition_bytes": len(body),
            "load_before": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
            "versions": {"cpus": str(os.cpu_count()), "python": platform.python_version()},
        }
        api_url = f"http://127.0.0.1:{web_port}{API_PATH}"
        print(f"warm-up: {args.warmup} s", flush=True)
        check(
            "warm-up",
            report_of(
                subprocess.run(
                    wrk(api_url, args.api_connections, args.warmup),
                    env=wrk_env(args.api_delay_ms, None),
                    capture_output=True,
                    text=True,
                    check=False,
                )
            ),
            expect_2xx=True,
        )
        rounds: list[Round] = []
        for n in range(1, args.rounds + 1):
            # Each round starts one scenario further on, so no scenario is always first.
            shift = (n - 1) % len(scenarios)
            for name in scenarios[shift:] + scenarios[:shift]:
                rounds.append(run_round(args, setup, name, n))
    finally:
        stop(web)
        stop(metrics)

    summaries = {name: summarize(rounds, name) for name in scenarios}
    verdicts = print_report(args, info, summaries, rounds)
    if not args.no_save:
        path = save(args, info, rounds, summaries, verdicts)
        print(f"\n  figures written to {path.relative_to(REPO)}")
    if args.strict and not all(verdicts[n]["met"] for n in (TOKEN, PORT) if n in verdicts):
        return 3
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench/metrics FAILED: {exc}", file=sys.stderr)
        sys.exit(1)
