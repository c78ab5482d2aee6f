"""Audited writes per second, ours against django-auditlog and django-simple-history, at 1, 4
and 8 writer processes, and the sealing lag of ours. Run by bench/audit/run.py.

Each target has a fresh PostgreSQL database of its own (mkp_aud_ours, mkp_aud_auditlog,
mkp_aud_history) on the same server. A round starts N writer processes (bench/audit/writer.py)
that begin at the same instant and make audited writes for a fixed time, one per transaction:
a partner row inserted or updated, with its audit record. Rounds are interleaved, ours,
auditlog, history, then the other way round, for each process count, so that a trend on the
machine weighs on all three alike.

Ours runs in the repository's .venv with the platform's settings (config.settings.local on
PostgreSQL). When the platform has a sealer (the `audit_seal` management command), every ours
round runs it beside the writers (`manage.py audit_seal --loop`, started with them and stopped
once the round's events are sealed), and a thread of this process watches the chain grow (every
20 ms, the events sealed since the last look, in sequence order); the sealing lag of an event is
when it was first seen sealed minus when its writer's commit returned. Without a sealer (events
are sealed by the append itself) the same watch measures the time to visibility, a few ms.
After the rounds, everything still pending is sealed and `audit.verify.chain_verify` must pass
over the whole chain with exactly as many events as the writers committed: a fast but broken
append does not pass. The peers' record counts are checked the same way.

The peers run in bench/audit/.venv, created here with the same Python and the pins of
bench/audit/requirements-peers.txt, in the project bench/audit/peers.

With a baseline (`run.py --baseline REV`), a fourth target, `baseline`, is the platform as it
was at that commit (`git archive REV`, in a temporary folder, on its own database
mkp_aud_baseline), written to the same way and checked the same way, in the same interleaved
rounds: ours ÷ baseline is then a before/after ratio measured side by side.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SERVER = "postgres://postgres@127.0.0.1:5432"
PEERS = ("auditlog", "history")
DATABASES = {
    "ours": "mkp_aud_ours",
    "baseline": "mkp_aud_baseline",
    "auditlog": "mkp_aud_auditlog",
    "history": "mkp_aud_history",
}
PEER_VENV = HERE / ".venv"
PEER_REQUIREMENTS = HERE / "requirements-peers.txt"
WRITER = HERE / "writer.py"
# Ours' cache and broker, as in production: the wake-up after each commit is one cache.add
# there. The database is this bench's alone; compare() refuses one that holds keys already.
REDIS_DB = 15
# The code each platform target runs: the repository, and the baseline's tree when there is one.
TREES: dict[str, Path] = {"ours": REPO}
WATCH_INTERVAL = 0.02
SEAL_WAIT_SECONDS = 60.0
LAG_TARGET_P95 = 1.0


# --- Environments --------------------------------------------------------------------------


def peer_python() -> Path:
    """bench/audit/.venv's python, the venv created or brought up to the pins first."""
    python = PEER_VENV / "bin" / "python"
    stamp = PEER_VENV / "installed-requirements.txt"
    wanted = PEER_REQUIREMENTS.read_text()
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    base = getattr(sys, "_base_executable", None) or sys.executable
    if not python.exists():
        print(f"creating {PEER_VENV.relative_to(REPO)} …", flush=True)
        subprocess.run([base, "-m", "venv", str(PEER_VENV)], check=True)
    print("installing the peers (requirements-peers.txt) …", flush=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "-r", str(PEER_REQUIREMENTS)], check=True
    )
    version = subprocess.run(
        [str(python), "-c", "import sys; print(sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if version != str(sys.version_info[:2]):
        sys.exit(f"{PEER_VENV} runs Python {version}, not {sys.version_info[:2]}: remove it")
    stamp.write_text(wanted)
    return python


def clean_environment() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MARKETPLACE_", "DJANGO_", "BENCH_")) and k != "PYTHONPATH"
    }


def environment(target: str) -> dict[str, str]:
    if target in TREES:
        return {
            **clean_environment(),
            "DJANGO_SETTINGS_MODULE": "config.settings.local",
            "MARKETPLACE_DATABASE_URL": f"{SERVER}/{DATABASES[target]}",
            "MARKETPLACE_DATA_DIR": str(Path(tempfile.gettempdir()) / f"mkp-aud-{target}"),
            "MARKETPLACE_REDIS_URL": f"redis://127.0.0.1:6379/{REDIS_DB}",
            "BENCH_AUDIT_TREE": str(TREES[target]),
        }
    return {
        **clean_environment(),
        "DJANGO_SETTINGS_MODULE": "bench.audit.peers.settings",
        "BENCH_PEERS_DATABASE": DATABASES[target],
        "PYTHONPATH": str(REPO),
    }


def python_of(target: str, peer: Path) -> str:
    return sys.executable if target in TREES else str(peer)


def tree_of(target: str) -> Path:
    return TREES.get(target, REPO)


def baseline_tree(revision: str) -> Path:
    """The repository at `revision`, unpacked into a temporary folder (git archive)."""
    tree = Path(tempfile.mkdtemp(prefix="mkp-aud-baseline-"))
    archive = subprocess.run(
        ["git", "archive", revision], cwd=REPO, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def fresh_databases(targets: tuple[str, ...], peer: Path) -> None:
    import psycopg

    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as connection:
        for target in targets:
            name = DATABASES[target]
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            connection.execute(f'CREATE DATABASE "{name}"')
    for target in targets:
        if target in TREES:
            command = [sys.executable, "manage.py", "migrate", "-v0"]
        else:
            command = [str(peer), "-m", "django", "migrate", "-v0"]
        subprocess.run(command, cwd=tree_of(target), env=environment(target), check=True)


def has_sealer(target: str) -> bool:
    return (tree_of(target) / "audit" / "management" / "commands" / "audit_seal.py").exists()


# --- Watching the chain grow -----------------------------------------------------------------


class SealWatch(threading.Thread):
    """Notes when each event is first seen sealed. Sealing gives gapless sequence numbers and
    commits them in order, so asking for the events past the last sequence seen misses none."""

    def __init__(self, database: str) -> None:
        super().__init__(daemon=True)
        import psycopg

        self.connection = psycopg.connect(f"{SERVER}/{database}", autocommit=True)
        columns = {
            row[0]
            for row in self.connection.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = %s",
                ("audit_event",),
            )
        }
        # The event's own key: `id` once events are written unsealed, else the sequence.
        self.key = "id" if "id" in columns else "sequence"
        self.after = self.connection.execute(
            "SELECT coalesce(max(sequence), 0) FROM audit_event"
        ).fetchone()[0]
        self.seen: dict[int, float] = {}
        self.polls = 0
        self.done = threading.Event()

    def run(self) -> None:
        # self.key is one of two column names, never input.
        query = (
            f"SELECT {self.key}, sequence FROM audit_event WHERE sequence > %s ORDER BY sequence"  # noqa: S608
        )
        while not self.done.is_set():
            rows = self.connection.execute(query, (self.after,)).fetchall()
            now = time.time()
            for key, _ in rows:
                self.seen[key] = now
            if rows:
                self.after = rows[-1][1]
            self.polls += 1
            time.sleep(WATCH_INTERVAL)
        self.connection.close()

    def wait_for(self, keys: set[int], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if keys.issubset(self.seen.keys()):
                return True
            time.sleep(0.05)
        return keys.issubset(self.seen.keys())


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def database_backends(database: str) -> list[int]:
    """The pids of the PostgreSQL backends connected to `database` (same machine)."""
    import psycopg

    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as connection:
        rows = connection.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        ).fetchall()
    return [row[0] for row in rows if Path(f"/proc/{row[0]}").exists()]


def machine_times() -> tuple[int, int]:
    """(idle, total) jiffies of all cores since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return values[3] + values[4], sum(values)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- One round -----------------------------------------------------------------------------


def run_round(target: str, writers: int, seconds: float, tag: str, peer: Path) -> dict:
    env = environment(target)
    workdir = Path(tempfile.mkdtemp(prefix="mkp-aud-round-"))
    sealer = watch = None
    if target in TREES:
        watch = SealWatch(DATABASES[target])
        watch.start()
        if has_sealer(target):
            sealer = subprocess.Popen(
                [sys.executable, "manage.py", "audit_seal", "--loop"],
                cwd=tree_of(target),
                env=env,
            )
    processes = [
        subprocess.Popen(
            [
                python_of(target, peer),
                str(WRITER),
                "write",
                target,
                f"{tag}w{n}",
                str(seconds),
                str(workdir / f"w{n}.json"),
            ],
            cwd=tree_of(target),
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(writers)
    ]
    try:
        for process in processes:
            if process.stdout.readline().strip() != "ready":
                sys.exit(f"a {target} writer did not start (exit {process.wait()})")
        time.sleep(0.5 if sealer is None else 1.5)  # the sealer has loaded Django by then
        # What the round costs: the writers' CPU (they report it), their database backends',
        # the sealer's and its backend's, this process's (the watch); the rest of the
        # machine's busy time went to others (and to PostgreSQL's own background processes).
        mine = [*database_backends(DATABASES[target])]
        if sealer is not None:
            mine.append(sealer.pid)
        start_at = time.time() + 0.2
        for process in processes:
            process.stdin.write(f"{start_at}\n")
            process.stdin.flush()
        time.sleep(max(0.0, start_at - time.time()))
        idle_before, total_before = machine_times()
        cpu_before = {pid: cpu_seconds(pid) for pid in mine}
        self_before = own_cpu_seconds()
        for process in processes:
            if process.stdout.readline().strip() != "done":
                sys.exit(f"a {target} writer failed (exit {process.wait()})")
        idle_after, total_after = machine_times()
        cpu_used = {pid: cpu_seconds(pid) - before for pid, before in cpu_before.items()}
        self_used = own_cpu_seconds() - self_before
        for process in processes:
            process.stdin.write("exit\n")
            process.stdin.flush()
        for process in processes:
            if process.wait(timeout=30) != 0:
                sys.exit(f"a {target} writer failed (exit {process.returncode})")
        results = [json.loads((workdir / f"w{n}.json").read_text()) for n in range(writers)]
        writes = sum(result["writes"] for result in results)
        writer_cpu = sum(result["cpu_seconds"] for result in results)
        hz = os.sysconf("SC_CLK_TCK")
        busy = (total_after - total_before - (idle_after - idle_before)) / hz
        span = (total_after - total_before) / hz  # all cores
        ours_cpu = writer_cpu + sum(cpu_used.values()) + self_used
        figures = {
            "target": target,
            "writers": writers,
            "writes": writes,
            "writes_per_second": writes / seconds,
            "writer_cpu_ms_per_write": 1000 * writer_cpu / max(writes, 1),
            "round_cpu_ms_per_write": 1000 * ours_cpu / max(writes, 1),
            "machine_busy": busy / max(span, 1e-9),
            "others_share": max(0.0, busy - ours_cpu) / max(span, 1e-9),
        }
        if watch is not None:
            committed = {key: at for result in results for key, at in result["commits"]}
            all_seen = watch.wait_for(set(committed), SEAL_WAIT_SECONDS)
            # A look that saw the event before its writer read the clock counts as no lag.
            lags = [
                max(0.0, watch.seen[key] - at) for key, at in committed.items() if key in watch.seen
            ]
            figures["sealer"] = sealer is not None
            figures["lags"] = lags
            figures["unsealed_after_wait"] = len(committed) - len(lags)
            figures["all_sealed"] = all_seen
            figures["watch_polls"] = watch.polls
            if sealer is not None and sealer.poll() is None:
                figures["sealer_cpu_seconds"] = cpu_seconds(sealer.pid) - cpu_before[sealer.pid]
            if sealer is not None and sealer.poll() is not None:
                sys.exit(f"the sealer stopped during the round (exit {sealer.returncode})")
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
        if sealer is not None:
            stop(sealer)
        if watch is not None:
            watch.done.set()
            watch.join()
    return figures


def check(target: str, expected: int, peer: Path) -> dict:
    result = subprocess.run(
        [python_of(target, peer), str(WRITER), "check", target, str(expected)],
        cwd=tree_of(target),
        env=environment(target),
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        sys.exit(f"the {target} check failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# --- The comparison --------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def compare(
    *,
    processes: list[int],
    seconds: float,
    rounds: int,
    redis_db: int,
    baseline: str | None = None,
) -> dict:
    """Runs the comparison and prints it. `baseline`: a git revision (or a folder holding a
    copy of the repository) to measure beside ours.
    The keys written to Redis database `redis_db` (wake-ups, and tasks nobody consumes since
    the standing sealer does the work) are removed afterwards."""
    import redis

    global REDIS_DB  # read by environment(), for every process started
    REDIS_DB = redis_db
    client = redis.Redis(host="127.0.0.1", port=6379, db=redis_db)
    if client.dbsize():
        sys.exit(f"Redis database {redis_db} holds keys already; choose another with --redis-db")
    targets: tuple[str, ...] = ("ours", *PEERS)
    unpacked = None
    if baseline:
        print(f"baseline: the platform at {baseline} …", flush=True)
        if Path(baseline).is_dir():  # a tree at hand (e.g. unpacked earlier)
            TREES["baseline"] = Path(baseline).resolve()
        else:
            TREES["baseline"] = unpacked = baseline_tree(baseline)
        targets = ("ours", "baseline", *PEERS)
    try:
        return _compare(
            targets=targets, processes=processes, seconds=seconds, rounds=rounds, baseline=baseline
        )
    finally:
        for key in client.scan_iter(count=1000):
            client.delete(key)
        TREES.pop("baseline", None)
        if unpacked is not None:
            shutil.rmtree(unpacked, ignore_errors=True)


def _compare(
    *,
    targets: tuple[str, ...],
    processes: list[int],
    seconds: float,
    rounds: int,
    baseline: str | None,
) -> dict:
    peer = peer_python()
    print(f"fresh databases {', '.join(DATABASES[t] for t in targets)} …", flush=True)
    fresh_databases(targets, peer)
    for target in (t for t in targets if t in TREES):
        print(
            f"{target} runs "
            + (
                "a sealer (manage.py audit_seal --loop) beside its writers"
                if has_sealer(target)
                else "no sealer (events are sealed as they are appended)"
            ),
            flush=True,
        )
    done: list[dict] = []
    for writers in processes:
        for index in range(rounds):
            order = targets if index % 2 == 0 else tuple(reversed(targets))
            for target in order:
                figures = run_round(target, writers, seconds, f"r{len(done)}", peer)
                done.append(figures)
                line = (
                    f"  {writers} x {target:<9} round {index + 1}: "
                    f"{figures['writes_per_second']:>7,.0f} writes/s, "
                    f"CPU {figures['round_cpu_ms_per_write']:.2f} ms/write "
                    f"(writers {figures['writer_cpu_ms_per_write']:.2f}), "
                    f"machine {figures['machine_busy']:.0%} busy, "
                    f"others {figures['others_share']:.0%}"
                )
                if figures.get("lags"):
                    line += (
                        f"; seal lag p50 {percentile(figures['lags'], 0.5) * 1000:,.0f} ms, "
                        f"p95 {percentile(figures['lags'], 0.95) * 1000:,.0f} ms"
                    )
                print(line, flush=True)

    print("checking every target's records (ours: seal what is pending, verify the chain) …")
    checks = {}
    for target in targets:
        expected = sum(f["writes"] for f in done if f["target"] == target)
        checks[target] = check(target, expected, peer) | {"expected": expected}
        if not checks[target]["ok"]:
            sys.exit(f"{target}: the records do not add up: {checks[target]}")

    summary: dict[str, dict] = {}
    for writers in processes:
        row: dict = {}
        for target in targets:
            mine = [f for f in done if f["target"] == target and f["writers"] == writers]
            rates = [f["writes_per_second"] for f in mine]
            row[target] = {
                "mean": statistics.mean(rates),
                "rounds": rates,
                "writer_cpu_ms_per_write": statistics.mean(
                    f["writer_cpu_ms_per_write"] for f in mine
                ),
                "round_cpu_ms_per_write": statistics.mean(
                    f["round_cpu_ms_per_write"] for f in mine
                ),
                "machine_busy": statistics.mean(f["machine_busy"] for f in mine),
                "others_share": statistics.mean(f["others_share"] for f in mine),
            }
            if target not in TREES:
                continue
            lags = [lag for f in mine for lag in f.get("lags", [])]
            if lags:
                row[target]["seal_lag"] = {
                    "p50": percentile(lags, 0.5),
                    "p95": percentile(lags, 0.95),
                    "max": max(lags),
                    "events": len(lags),
                }
            cpu = [f["sealer_cpu_seconds"] for f in mine if "sealer_cpu_seconds" in f]
            if cpu:
                events = sum(f["writes"] for f in mine)
                row[target]["sealer_cpu_ms_per_event"] = 1000 * sum(cpu) / events
        for other in targets[1:]:
            row[f"ours_over_{other}"] = row["ours"]["mean"] / row[other]["mean"]
        summary[str(writers)] = row
    for f in done:
        f.pop("lags", None)
    result = {
        "seconds_per_round": seconds,
        "rounds": rounds,
        "targets": list(targets),
        "baseline": baseline,
        "sealer": {t: has_sealer(t) for t in targets if t in TREES},
        "summary": summary,
        "checks": checks,
        "round_figures": done,
    }
    report(result, processes)
    return result


def report(result: dict, processes: list[int]) -> None:
    summary, targets = result["summary"], result["targets"]
    others = targets[1:]
    print()
    print(
        f"audited writes/s (mean of {result['rounds']} interleaved rounds of "
        f"{result['seconds_per_round']:g} s; one write per transaction)"
    )
    if result["baseline"]:
        print(f"baseline: the platform at {result['baseline']}")
    print(
        f"{'processes':>9} "
        + " ".join(f"{t:>9}" for t in targets)
        + " "
        + " ".join(f"{'ours/' + t:>14}" for t in others)
    )
    for writers in processes:
        row = summary[str(writers)]
        print(
            f"{writers:>9} "
            + " ".join(f"{row[t]['mean']:>9,.0f}" for t in targets)
            + " "
            + " ".join(f"{row[f'ours_over_{t}']:>14.2f}" for t in others)
        )
    print(
        "CPU ms per write (writers, their PostgreSQL backends, the sealer; in brackets the"
        " writers alone), and the share of the two cores others took meanwhile:"
    )
    for writers in processes:
        row = summary[str(writers)]
        print(
            f"{writers:>9} "
            + " ".join(
                f"{row[t]['round_cpu_ms_per_write']:>5.2f} "
                f"({row[t]['writer_cpu_ms_per_write']:.2f})"
                for t in targets
            )
            + "   others "
            + " ".join(f"{row[t]['others_share']:.0%}" for t in targets)
        )
    first, last = str(processes[0]), str(processes[-1])
    for target in targets:
        ratio = summary[last][target]["mean"] / summary[first][target]["mean"]
        print(f"scaling {target:<9} ({last} processes ÷ {first}): {ratio:.2f}")
    for target, sealer in result["sealer"].items():
        what = "sealing lag" if sealer else "commit → seen sealed (no sealer)"
        print(f"{target}, {what} (target p95 ≤ {LAG_TARGET_P95:g} s):")
        for writers in processes:
            row = summary[str(writers)][target]
            lag = row.get("seal_lag")
            if lag:
                extra = ""
                if "sealer_cpu_ms_per_event" in row:
                    extra = f"; sealer CPU {row['sealer_cpu_ms_per_event']:.3f} ms/event"
                print(
                    f"  {writers} processes: p50 {lag['p50'] * 1000:,.0f} ms, "
                    f"p95 {lag['p95'] * 1000:,.0f} ms, max {lag['max'] * 1000:,.0f} ms "
                    f"over {lag['events']:,} events{extra}"
                )
    for target in result["sealer"]:
        check = result["checks"][target]
        print(f"{target}, chain after the rounds: {check['summary']}; {check['unsealed']} unsealed")
