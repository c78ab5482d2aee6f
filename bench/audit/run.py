"""Benchmark of the audit log on PostgreSQL: appends, verification against a floor, and the
export of a million events.

    .venv/bin/python bench/audit/run.py                 # from the repository root, ~3 min
    .venv/bin/python bench/audit/run.py --events 200000 # a quicker, smaller run

What it does, in order, on a fresh PostgreSQL database `marketplace_bench_audit`:
1. **Seed**: writes the million events (hashes computed by `audit.chain`) straight into the
   table with COPY, spread over one UTC day two days ago, so what follows runs on a table with
   history.
2. **Appends**: 1 writer process, then 8 at once, each appending events through
   `audit.services.audit_append`, one transaction per event, for a fixed time; prints events/s.
   Step 4 verifies the whole chain, so a fast but broken append would not pass.
3. **Export**: `manage.py export_audit_batch` over that day, in its own process; prints the
   wall time and the process's peak resident memory (ru_maxrss).
4. **Verify**: the export file checked by `audit.chain.verify_export` (what
   `audit_verify --export` runs) against the floor, a bare hashlib SHA-256 chain over the same
   lines of the same file (read, hash, chain; nothing checked); then `audit.verify.chain_verify`
   (the database check, which re-encodes each row) against the floor over the same record
   bytes. Rounds alternate ours/floor/floor/ours; the ratio is ours ÷ floor, best round of each.

Targets (issue 3): verify ≥ 0.5 of the floor; the export under 60 s and under 200 MB.
Exit 1 on a failed check, 3 with --strict when a target is missed.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
RESULTS_DIR = REPO / "bench" / "results"
DATABASE = "marketplace_bench_audit"
SERVER = "postgres://postgres@127.0.0.1:5432"

sys.path.insert(0, str(REPO))


def environment() -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MARKETPLACE_")}
    return {
        **clean,
        "DJANGO_SETTINGS_MODULE": "config.settings.local",
        "MARKETPLACE_DATABASE_URL": f"{SERVER}/{DATABASE}",
        "MARKETPLACE_DATA_DIR": str(Path(tempfile.gettempdir()) / "marketplace-bench-audit"),
    }


def fresh_database() -> None:
    import psycopg

    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        connection.execute(f'CREATE DATABASE "{DATABASE}"')
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v0"], cwd=REPO, env=environment(), check=True
    )


# --- 1. Appends --------------------------------------------------------------------------------

APPENDER = """
import os, sys, time, django
django.setup()
from django.db import transaction
from audit.services import audit_append
from marketplace.actors import Actor
name, seconds, start_at = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
time.sleep(max(0.0, start_at - time.time()))
deadline, count = start_at + seconds, 0
while time.time() < deadline:
    with transaction.atomic():
        audit_append(actor=Actor.service(name), action="bench.appended",
                     subject=("order", count), data={"amount": 4900, "currency": "EUR"})
    count += 1
print(count)
"""


def appends(writers: int, seconds: float) -> dict[str, float]:
    start_at = time.time() + 4  # every process has loaded Django by then
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", APPENDER, f"w{n}", str(seconds), str(start_at)],
            cwd=REPO,
            env=environment(),
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(writers)
    ]
    counts = []
    for process in processes:
        out, _ = process.communicate(timeout=seconds + 120)
        if process.returncode != 0:
            sys.exit(f"a writer failed (exit {process.returncode})")
        counts.append(int(out.strip()))
    total = sum(counts)
    return {"writers": writers, "events": total, "events_per_second": total / seconds}


# --- 2. Seed -----------------------------------------------------------------------------------


def seed(until: int, day: datetime) -> None:
    """Continues the chain to `until` events with COPY, spread evenly over `day`."""
    from django.db import connection

    from audit.chain import format_time, record_hash, record_of
    from audit.models import AuditEvent, ChainHead
    from marketplace.canonical import canonical_json

    last = AuditEvent.objects.order_by("-sequence").first()
    start = last.sequence if last else 0
    prev = last.hash if last else "0" * 64
    count = until - start
    step = timedelta(microseconds=max(1, int(86_000e6 / max(count, 1))))
    moment = day + timedelta(seconds=60)
    columns = (
        "sequence, occurred_at, actor_type, actor_id, action, subject_type, subject_id, data, "
        "prev_hash, hash"
    )
    with connection.cursor() as cursor:
        raw = cursor.connection
        with raw.cursor().copy(f"COPY audit_event ({columns}) FROM STDIN") as copy:
            for sequence in range(start + 1, until + 1):
                data = {"amount": 4900 + sequence % 1000, "currency": "EUR", "sku": "mesh-tools"}
                record = record_of(
                    sequence=sequence,
                    occurred_at=moment,
                    actor_type="buyer",
                    actor_id=f"buyer-{sequence % 5000}",
                    action="order.paid",
                    subject_type="order",
                    subject_id=str(sequence),
                    data=data,
                    prev_hash=prev,
                )
                prev = record_hash(record)
                copy.write_row(
                    (
                        sequence,
                        format_time(moment),
                        "buyer",
                        record["actor"]["id"],
                        "order.paid",
                        "order",
                        str(sequence),
                        canonical_json(data).decode(),
                        record["prev_hash"],
                        prev,
                    )
                )
                moment += step
    ChainHead.objects.update_or_create(
        id=1, defaults={"sequence": until, "hash": prev, "occurred_at": moment}
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE audit_event")


# --- 3. Export ---------------------------------------------------------------------------------

MEASURED = """
import resource, subprocess, sys, time
started = time.perf_counter()
result = subprocess.run(sys.argv[1:])
elapsed = time.perf_counter() - started
peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(f"{result.returncode} {elapsed} {peak_kib}")
"""


def export(start: datetime, end: datetime, out: Path) -> dict[str, float]:
    command = [
        sys.executable,
        "manage.py",
        "export_audit_batch",
        "--from",
        start.isoformat(),
        "--to",
        end.isoformat(),
        "--out",
        str(out),
    ]
    result = subprocess.run(
        [sys.executable, "-c", MEASURED, *command],
        cwd=REPO,
        env=environment(),
        capture_output=True,
        text=True,
        check=True,
    )
    code, elapsed, peak_kib = result.stdout.strip().splitlines()[-1].split()
    if code != "0":
        sys.exit(f"the export failed (exit {code})")
    return {
        "seconds": float(elapsed),
        "peak_mib": int(peak_kib) / 1024,
        "file_mib": out.stat().st_size / 2**20,
    }


# --- 4. Verify ---------------------------------------------------------------------------------


def floor_file(path: Path) -> tuple[float, int]:
    """A bare SHA-256 chain over the export's lines: read, hash, chain."""
    sha256 = hashlib.sha256
    started = time.perf_counter()
    chained = b"\0" * 32
    count = 0
    with gzip.open(path, "rb") as handle:
        for line in handle:
            chained = sha256(chained + line).digest()
            count += 1
    return time.perf_counter() - started, count


def ours_file(path: Path, keys: dict) -> tuple[float, int]:
    from audit.chain import verify_export

    started = time.perf_counter()
    report = verify_export(path, keys)
    elapsed = time.perf_counter() - started
    if not report.ok:
        sys.exit(f"the export does not verify: {report.failure}")
    return elapsed, report.events


def database_bytes() -> list[bytes]:
    """The record bytes the database check hashes, for its floor."""
    from audit.chain import record_of
    from audit.models import AuditEvent
    from marketplace.canonical import canonical_json

    out = []
    for row in AuditEvent.objects.order_by("sequence").iterator(chunk_size=5000):
        out.append(
            canonical_json(
                record_of(
                    sequence=row.sequence,
                    occurred_at=row.occurred_at,
                    actor_type=row.actor_type,
                    actor_id=row.actor_id,
                    action=row.action,
                    subject_type=row.subject_type,
                    subject_id=row.subject_id,
                    data=row.data,
                    prev_hash=row.prev_hash,
                )
            )
        )
    return out


def floor_bytes(records: list[bytes]) -> tuple[float, int]:
    sha256 = hashlib.sha256
    started = time.perf_counter()
    chained = b"\0" * 32
    for record in records:
        chained = sha256(chained + record).digest()
    return time.perf_counter() - started, len(records)


def ours_database() -> tuple[float, int]:
    from audit.verify import chain_verify

    started = time.perf_counter()
    report = chain_verify()
    elapsed = time.perf_counter() - started
    if not report.ok:
        sys.exit(f"the chain does not verify: {report.summary()}")
    return elapsed, report.events


def alternate(ours, floor, rounds: int) -> tuple[float, float]:
    """Best events/s of each over ABBA rounds."""
    best = {"ours": 0.0, "floor": 0.0}
    for index in range(rounds):
        order = [("ours", ours), ("floor", floor)]
        if index % 2:
            order.reverse()
        for name, run in order:
            seconds, events = run()
            best[name] = max(best[name], events / seconds)
    return best["ours"], best["floor"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--append-seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--strict", action="store_true")
    options = parser.parse_args()

    os.environ.update(environment())
    print(f"fresh database {DATABASE} …", flush=True)
    fresh_database()
    import django

    django.setup()

    day = (datetime.now(UTC) - timedelta(days=2)).replace(hour=0, minute=0, second=0, microsecond=0)
    print(f"seeding {options.events:,} events …", flush=True)
    started = time.perf_counter()
    seed(options.events, day)
    seeded = time.perf_counter() - started

    # Appends go on top of the seeded chain, as they would on a platform with history.
    print("appends: 1 writer …", flush=True)
    one = appends(1, options.append_seconds)
    print("appends: 8 writers …", flush=True)
    eight = appends(8, options.append_seconds)

    from audit.models import AuditEvent

    # The whole chain: the seeded day and the appends made just now.
    start = day
    end = datetime.now(UTC) + timedelta(seconds=1)
    workdir = Path(tempfile.mkdtemp(prefix="marketplace-bench-audit-"))
    out = workdir / "audit.jsonl.gz"
    print("exporting …", flush=True)
    time.sleep(1.5)  # the export refuses a period that has not ended yet
    exported = export(start, end, out)

    from marketplace.keystore import public_keys_from_store
    from marketplace.models import SigningKeyPurpose

    keys = public_keys_from_store(purpose=SigningKeyPurpose.AUDIT)
    print("verifying the export against the floor …", flush=True)
    file_ours, file_floor = alternate(
        lambda: ours_file(out, keys), lambda: floor_file(out), options.rounds
    )
    print("verifying the database against the floor …", flush=True)
    records = database_bytes()
    db_ours, db_floor = alternate(ours_database, lambda: floor_bytes(records), options.rounds)
    total = AuditEvent.objects.count()

    figures = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "events": total,
        "append_1_writer": one,
        "append_8_writers": eight,
        "seed_seconds": seeded,
        "export": exported,
        "verify_export_events_per_second": file_ours,
        "floor_export_events_per_second": file_floor,
        "verify_export_ratio": file_ours / file_floor,
        "verify_database_events_per_second": db_ours,
        "floor_database_events_per_second": db_floor,
        "verify_database_ratio": db_ours / db_floor,
    }
    print()
    print(f"events in the chain                 {total:>12,}")
    print(f"append, 1 writer                    {one['events_per_second']:>12,.0f} events/s")
    print(f"append, 8 writers                   {eight['events_per_second']:>12,.0f} events/s")
    print(
        f"export of {total:,} events           {exported['seconds']:>12.1f} s, "
        f"peak {exported['peak_mib']:.0f} MiB, file {exported['file_mib']:.0f} MiB"
        "   (targets < 60 s, < 200 MB)"
    )
    print(
        f"verify export (audit_verify --export) {file_ours:>10,.0f} events/s; floor "
        f"{file_floor:,.0f}; ratio {file_ours / file_floor:.2f}   (target ≥ 0.5)"
    )
    print(
        f"verify database (audit_verify)      {db_ours:>12,.0f} events/s; floor "
        f"{db_floor:,.0f}; ratio {db_ours / db_floor:.2f}"
    )
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    result_file = RESULTS_DIR / f"audit-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    result_file.write_text(json.dumps(figures, indent=2))
    print(f"\nfigures written to {result_file.relative_to(REPO)}")
    missed = (
        file_ours / file_floor < 0.5
        or exported["seconds"] >= 60
        or exported["peak_mib"] * 2**20 >= 200e6
    )
    return 3 if options.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
