"""Benchmark of the audit log on PostgreSQL: audited writes against django-auditlog and
django-simple-history at 1, 4 and 8 processes with the sealing lag, then verification against a
floor and the export of a million events.

    .venv/bin/python bench/audit/run.py                 # from the repository root, ~8 min
    .venv/bin/python bench/audit/run.py --appends-only  # the comparison alone, ~4 min
    .venv/bin/python bench/audit/run.py --export-only --events 200000 # export/verify, smaller

What it does, in order:
1. **Audited writes** (bench/audit/compare.py, which says how): ours, django-auditlog and
   django-simple-history, each on a fresh database of its own (mkp_aud_ours, mkp_aud_auditlog,
   mkp_aud_history), at 1, 4 and 8 writer processes, one audited write (a partner row inserted
   or updated, with its audit record) per transaction, in interleaved rounds; writes/s, the
   ratios ours ÷ each peer, each target's scaling, and ours' sealing lag (p50/p95/max). The
   whole chain then verifies with exactly as many events as were committed, or the run fails.
   The peers are installed into bench/audit/.venv by this runner.
2. **Seed** (on a fresh database `mkp_aud_export`): writes the million events (hashes computed
   by `audit.chain`) straight into the table with COPY, spread over one UTC day two days ago.
3. **Export**: `manage.py export_audit_batch` over that day, in its own process; prints the
   wall time and the process's peak resident memory (ru_maxrss).
4. **Verify**: the export file checked by `audit.chain.verify_export` (what
   `audit_verify --export` runs) against the floor, a bare hashlib SHA-256 chain over the same
   lines of the same file (read, hash, chain; nothing checked); then `audit.verify.chain_verify`
   (the database check, which re-encodes each row) against the floor over the same record
   bytes. Rounds alternate ours/floor/floor/ours; the ratio is ours ÷ floor, best round of each.

Targets: sealing lag p95 ≤ 1 s (issue 12); verify ≥ 0.5 of the floor, the export under 60 s and
under 200 MB (issue 3). Exit 1 on a failed check, 3 with --strict when a target is missed.
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
DATABASE = "mkp_aud_export"
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


# --- 2. Seed -----------------------------------------------------------------------------------


def seals_later() -> bool:
    """Whether this code inserts events unsealed and seals them afterwards (audit.sealer)."""
    from audit.models import AuditEvent

    return AuditEvent._meta.pk.name != "sequence"


def seed(until: int, day: datetime) -> tuple[dict[str, float], datetime, datetime]:
    """Continues the chain to `until` events; returns the sealing figures and the period the
    events fall in, for the export. Where events are sealed afterwards, they are inserted
    unsealed with COPY and sealed by `audit.sealer.seal_pending`, the one way into the chain
    (the triggers refuse sealed inserts, and date an insert by the database's clock when its
    own time is more than a minute off, so they carry the time they are written at). Before
    that, they were written sealed with COPY, hashes from audit.chain, spread over `day`."""
    if seals_later():
        return seed_unsealed(until)
    seed_sealed(until, day)
    return {}, day, day + timedelta(days=1)


def seed_unsealed(until: int) -> tuple[dict[str, float], datetime, datetime]:
    from django.db import connection

    from audit.chain import format_time
    from audit.models import AuditEvent
    from audit.sealer import BATCH_SIZE, seal_pending
    from marketplace.canonical import canonical_json

    count = until - AuditEvent.objects.count()
    start = datetime.now(UTC).replace(microsecond=0)
    moment = datetime.now(UTC)
    columns = "occurred_at, actor_type, actor_id, action, subject_type, subject_id, data"
    with connection.cursor() as cursor:
        raw = cursor.connection
        with raw.cursor().copy(f"COPY audit_event ({columns}) FROM STDIN") as copy:
            for n in range(1, count + 1):
                if n % 1000 == 0:
                    moment = datetime.now(UTC)
                data = {"amount": 4900 + n % 1000, "currency": "EUR", "sku": "mesh-tools"}
                copy.write_row(
                    (
                        format_time(moment),
                        "buyer",
                        f"buyer-{n % 5000}",
                        "order.paid",
                        "order",
                        str(n),
                        canonical_json(data).decode(),
                    )
                )
    # The sealer's own batch size: the rate at which it catches up with a backlog.
    print(f"sealing {count:,} events (audit.sealer.seal_pending, batches of {BATCH_SIZE:,}) …")
    started = time.perf_counter()
    sealed = 0
    while batch := seal_pending().count:
        sealed += batch
    sealing = time.perf_counter() - started
    if sealed != count:
        sys.exit(f"sealed {sealed:,} of {count:,} seeded events")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE audit_event")
    end = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
    figures = {
        "sealed": sealed,
        "batch": BATCH_SIZE,
        "sealing_seconds": sealing,
        "sealed_per_second": sealed / sealing,
    }
    return figures, start, end


def seed_sealed(until: int, day: datetime) -> None:
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
    parser.add_argument(
        "--append-seconds", type=float, default=8.0, help="length of one round of writes"
    )
    parser.add_argument(
        "--append-rounds", type=int, default=2, help="rounds of each target per process count"
    )
    parser.add_argument("--processes", default="1,4,8", help="writer process counts")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each verify")
    parser.add_argument(
        "--redis-db", type=int, default=15, help="ours' cache and broker (must be empty)"
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also measure the platform at this git revision (or in this folder)",
    )
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--appends-only", action="store_true", help="skip the export and verify")
    only.add_argument("--export-only", action="store_true", help="skip the audited writes")
    parser.add_argument("--strict", action="store_true")
    options = parser.parse_args()

    figures: dict = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }
    missed = False
    if not options.export_only:
        from bench.audit.compare import LAG_TARGET_P95, compare

        processes = [int(n) for n in options.processes.split(",")]
        print("audited writes: ours, django-auditlog, django-simple-history …", flush=True)
        figures["writes"] = compare(
            processes=processes,
            seconds=options.append_seconds,
            rounds=options.append_rounds,
            redis_db=options.redis_db,
            baseline=options.baseline,
        )
        missed = any(
            row["ours"].get("seal_lag", {}).get("p95", 0) > LAG_TARGET_P95
            for row in figures["writes"]["summary"].values()
        )
    if not options.appends_only:
        figures["export"] = export_and_verify(options)
        exported = figures["export"]["export"]
        missed = missed or (
            figures["export"]["verify_export_ratio"] < 0.5
            or exported["seconds"] >= 60
            or exported["peak_mib"] * 2**20 >= 200e6
        )
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    result_file = RESULTS_DIR / f"audit-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    result_file.write_text(json.dumps(figures, indent=2))
    print(f"\nfigures written to {result_file.relative_to(REPO)}")
    return 3 if options.strict and missed else 0


def export_and_verify(options: argparse.Namespace) -> dict:
    os.environ.update(environment())
    print(f"fresh database {DATABASE} …", flush=True)
    fresh_database()
    import django

    django.setup()

    day = (datetime.now(UTC) - timedelta(days=2)).replace(hour=0, minute=0, second=0, microsecond=0)
    print(f"seeding {options.events:,} events …", flush=True)
    started = time.perf_counter()
    sealing, start, end = seed(options.events, day)
    seeded = time.perf_counter() - started

    from audit.models import AuditEvent

    workdir = Path(tempfile.mkdtemp(prefix="marketplace-bench-audit-"))
    out = workdir / "audit.jsonl.gz"
    print("exporting …", flush=True)
    time.sleep(max(0.0, (end - datetime.now(UTC)).total_seconds() + 0.5))  # a period that ended
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
        "events": total,
        "seed_seconds": seeded,
        "seed_sealing": sealing,
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
    if sealing:
        print(
            f"sealing the seeded backlog          {sealing['sealed_per_second']:>12,.0f} events/s"
            f" ({sealing['sealing_seconds']:.1f} s, batches of {sealing['batch']:,})"
        )
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
    return figures


if __name__ == "__main__":
    sys.exit(main())
