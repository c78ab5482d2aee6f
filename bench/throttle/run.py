"""Concurrent requests from one client against a rate limit: how many pass, with DRF's own
throttles (old) and with the atomic counters (new).

    .venv/bin/python -m bench.throttle.run                      # from the repository root
    .venv/bin/python -m bench.throttle.run --requests 200 --limit 50
    .venv/bin/python -m bench.throttle.run --base-url http://127.0.0.1:8085 --limit 1200 \\
        --requests 1500                                        # a server already running

What it does (without --base-url):
1. migrates a SQLite database in var/bench-throttle and makes two buyers' API tokens per round;
2. for each variant, starts gunicorn (2 processes of 8 threads, so that the counters must be
   shared between processes) on Redis (database 2 by default, key prefix
   `marketplace-bench-throttle`), with every limit it measures set to `--limit`/min and
   MARKETPLACE_NUM_PROXIES=1, so that each round is a client of its own (a fresh
   X-Forwarded-For address, or a fresh buyer) and starts with a fresh window:
   - old: bench/throttle/settings_drf.py, DRF's AnonRateThrottle and UserRateThrottle;
   - new: bench/throttle/settings.py, the project's throttles (marketplace/api/throttling.py);
3. per round and case, opens `--requests` connections, releases them together with a barrier,
   and counts the answers: anonymous `GET /api/v1/skus`, a buyer's `GET /api/v1/orders`, and a
   buyer's `POST /api/v1/checkout` (no such SKU: a 404 is a request that passed the limit);
4. prints passed against the limit for each, and deletes the counters it made.

With --base-url it fires one round of the case `--path` names at that server, from this
machine's address as it is (the demo counts 127.0.0.1 as one anonymous client), and prints the
answers against `--limit` (what the server is configured with; `1200` for the demo's `anon`).

Exit 1 if the new throttles let more than the limit pass in any round (or any answer is neither
a pass nor a 429).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent.parent
KEY_PREFIX = b"marketplace-bench-throttle"
VARIANTS = {"old": "bench.throttle.settings_drf", "new": "bench.throttle.settings"}

Headers = Callable[[int], dict[str, str]]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--requests", type=int, default=32, help="concurrent requests per round (one client)")
    add("--limit", type=int, default=10, help="the limit, per minute, of each case")
    add("--rounds", type=int, default=3)
    add("--redis", default="redis://127.0.0.1:6379/2", help="Redis URL with its database")
    add("--data-dir", default=str(REPO / "var" / "bench-throttle"))
    add("--base-url", help="fire at this running server instead of starting one")
    add("--path", default="/api/v1/skus", help="with --base-url: the GET to fire")
    add("--token", default="", help="with --base-url: a buyer's API token to send")
    return parser.parse_args()


def fire(base_url: str, method: str, path: str, headers: Headers, body: bytes, n: int) -> Counter:
    url = urlsplit(base_url)
    barrier = threading.Barrier(n)

    def one(i: int) -> int:
        connection = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
        try:
            connection.connect()
            barrier.wait(timeout=60)
            connection.request(method, path, body=body or None, headers=headers(i))
            response = connection.getresponse()
            response.read()
            return response.status
        finally:
            connection.close()

    with ThreadPoolExecutor(n) as pool:
        return Counter(pool.map(one, range(n)))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bench_env(args: argparse.Namespace, settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARKETPLACE_")}
    rate = f"{args.limit}/min"
    env.update(
        DJANGO_SETTINGS_MODULE=settings,
        PYTHONPATH=str(REPO),
        MARKETPLACE_SERVICE_ENV="dev",
        MARKETPLACE_DATA_DIR=args.data_dir,
        MARKETPLACE_REDIS_URL=args.redis,
        MARKETPLACE_BROKER_URL=args.redis,
        MARKETPLACE_CELERY_QUEUE="marketplace-bench-throttle",
        MARKETPLACE_NUM_PROXIES="1",
        MARKETPLACE_THROTTLE_ANON=rate,
        MARKETPLACE_THROTTLE_USER=rate,
        MARKETPLACE_THROTTLE_CHECKOUT=rate,
        MARKETPLACE_THROTTLE_BUYER_WRITE="100000/min",
        MARKETPLACE_LOG_LEVEL="ERROR",
    )
    return env


def manage(env: dict[str, str], *argv: str) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *argv], env=env, cwd=REPO, check=True, capture_output=True
    )
    return done.stdout.decode().strip()


def start_server(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "gunicorn", "config.wsgi:application",
        "--bind", f"127.0.0.1:{port}", "--workers", "2", "--threads", "8",
        "--backlog", "2048", "--no-control-socket",
    ]  # fmt: skip
    with log.open("ab") as out:
        proc = subprocess.Popen(command, env=env, cwd=REPO, stdout=out, stderr=out)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"gunicorn exited with {proc.returncode}; see {log}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/health/live")
            connection.getresponse().read()
            return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"gunicorn did not answer within 60 s; see {log}")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def delete_own_counters(redis_url: str) -> int:
    import redis

    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=KEY_PREFIX + b":*", count=1000))
    if keys:
        client.delete(*keys)
    return len(keys)


def cases(
    round_no: int, reader: str, buyer_token: str
) -> list[tuple[str, str, str, Headers, bytes, int]]:
    """(name, method, path, headers, body, status that means the limit let it pass). The reads
    and the checkouts are of two buyers, so that the reads do not spend the checkouts' `user`
    budget."""
    # The client of this round, as the one trusted proxy (MARKETPLACE_NUM_PROXIES=1) reports.
    address = f"198.51.100.{round_no + 1}, 203.0.113.{round_no + 1}"
    anon: Headers = lambda i: {"X-Forwarded-For": address}  # noqa: E731
    buyer: Headers = lambda i: {"Authorization": f"Bearer {reader}"}  # noqa: E731

    def checkout(i: int) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {buyer_token}",
            "Content-Type": "application/json",
            "Idempotency-Key": f"bench-{round_no}-{i}-{time.time_ns()}",
        }

    body = json.dumps({"sku": "no-such-sku"}).encode()
    return [
        ("anonymous reads (anon)", "GET", "/api/v1/skus", anon, b"", 200),
        ("buyer reads (user)", "GET", "/api/v1/orders", buyer, b"", 200),
        ("checkout (checkout)", "POST", "/api/v1/checkout", checkout, body, 404),
    ]


def run_local(args: argparse.Namespace) -> int:
    Path(args.data_dir).mkdir(parents=True, exist_ok=True)
    log = Path(args.data_dir) / "gunicorn.log"
    env = bench_env(args, VARIANTS["new"])
    print(f"migrating {args.data_dir} ...", flush=True)
    manage(env, "migrate", "--noinput", "-v", "0")
    stamp = int(time.time())
    tokens = [
        manage(env, "issue_api_token", f"bench-throttle-{stamp}-{n}@example.com")
        for n in range(2 * args.rounds)
    ]
    print(
        f"{args.requests} concurrent requests per round from one client, limit "
        f"{args.limit}/min, {args.rounds} rounds, gunicorn 2 processes x 8 threads, Redis "
        f"{args.redis}"
    )
    failed = False
    try:
        for variant, settings in VARIANTS.items():
            port = free_port()
            proc = start_server(bench_env(args, settings), port, log)
            try:
                for round_no in range(args.rounds):
                    for name, method, path, headers, body, passed in cases(
                        round_no, tokens[2 * round_no], tokens[2 * round_no + 1]
                    ):
                        statuses = fire(
                            f"http://127.0.0.1:{port}", method, path, headers, body, args.requests
                        )
                        ok = statuses.pop(passed, 0)
                        refused = statuses.pop(429, 0)
                        other = f", other {dict(statuses)}" if statuses else ""
                        print(
                            f"{variant}  round {round_no + 1}  {name:24} passed {ok:4} of "
                            f"{args.requests}, 429 {refused:4}, limit {args.limit}{other}",
                            flush=True,
                        )
                        if variant == "new" and (ok > args.limit or statuses):
                            failed = True
            finally:
                stop_server(proc)
                # Each variant starts from fresh windows.
                delete_own_counters(args.redis)
    finally:
        delete_own_counters(args.redis)
    return 1 if failed else 0


def run_remote(args: argparse.Namespace) -> int:
    headers: Headers = (
        (lambda i: {"Authorization": f"Bearer {args.token}"}) if args.token else (lambda i: {})
    )
    statuses = fire(args.base_url, "GET", args.path, headers, b"", args.requests)
    ok, refused = statuses.pop(200, 0), statuses.pop(429, 0)
    other = f", other {dict(statuses)}" if statuses else ""
    print(
        f"GET {args.path}: passed {ok} of {args.requests}, 429 {refused}, limit {args.limit}{other}"
    )
    return 0


def main() -> int:
    args = parse_args()
    return run_remote(args) if args.base_url else run_local(args)


if __name__ == "__main__":
    sys.exit(main())
