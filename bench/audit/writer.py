"""One process of bench/audit's comparison (started by bench/audit/run.py, never by hand).

    writer.py write TARGET TAG SECONDS OUT   # audited writes, one per transaction
    writer.py check TARGET EXPECTED          # after the rounds: is every write recorded?

TARGET is `ours` or `baseline` (the platform, in the repository's .venv, its code from
BENCH_AUDIT_TREE or this repository, DJANGO_SETTINGS_MODULE set by the runner) or `auditlog` /
`history` (the peers' project bench/audit/peers, in bench/audit/.venv).

`write` sets Django up, connects, prints `ready` and waits for the start time on its standard
input, so that every writer of a round starts at the same instant whatever its start-up took.
Then, until the time is up, it alternates the two audited writes a platform makes, each in a
transaction of its own: insert a partner row (slug TAG-k) with its audit record, and update the
row it just inserted with its audit record. It writes `{"writes": n, "cpu_seconds": s,
"commits": [[id, t], ...]}` to OUT: the process's CPU time over the loop and, for ours, each
audit event's primary key with time.time() taken right after its commit returned (what the
sealing lag is measured from). It then prints `done` and stays connected until its standard
input gives it another line, so that the runner can read what its database backend used.

`check` prints JSON: how many audit records there are, and for ours whether every event is
sealed and the whole chain verifies (after sealing what is still pending, where the platform
has a sealer).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
# The platform's code: this repository's, or a baseline's tree (compare.py sets it).
sys.path.insert(0, os.environ.get("BENCH_AUDIT_TREE", str(REPO)))


def ours_writes(tag: str):
    from django.db import transaction

    from audit.services import audit_append
    from catalog.models import Partner, PartnerKind
    from catalog.services.changes import changes, partner_fields, recorded
    from marketplace.actors import Actor

    actor = Actor.service(f"bench-{tag}")

    def insert(k: int) -> tuple[Partner, int]:
        with transaction.atomic():
            partner = Partner(kind=PartnerKind.PUBLISHER, **fields(tag, k))
            partner.save()
            event = audit_append(
                actor=actor,
                action="partner.created",
                subject=partner,
                data=recorded(partner_fields(partner)),
            )
        return partner, event.pk

    def update(partner: Partner, k: int) -> int:
        # The platform's update: lock the row, read what it was, change it, record the change.
        with transaction.atomic():
            locked = Partner.objects.select_for_update().get(pk=partner.pk)
            before = partner_fields(locked)
            locked.name = f"{locked.name} v{k}"
            locked.save()
            event = audit_append(
                actor=actor,
                action="partner.updated",
                subject=locked,
                data=changes(before, partner_fields(locked)),
            )
        return event.pk

    return insert, update


def peer_writes(target: str, tag: str):
    from django.db import transaction

    from bench.audit.peers.models import AuditlogPartner, HistoryPartner

    model = AuditlogPartner if target == "auditlog" else HistoryPartner

    # The peers record the change from their own signals (auditlog reads the old row in
    # pre_save and writes a LogEntry of the differences; simple-history writes a full historical
    # copy in post_save), so the audited write is the plain save, in its own transaction.
    def insert(k: int):
        with transaction.atomic():
            row = model(kind="publisher", **fields(tag, k))
            row.save()
        return row, None

    def update(row, k: int) -> None:
        with transaction.atomic():
            row.name = f"{row.name} v{k}"
            row.save()

    return insert, update


def fields(tag: str, k: int) -> dict[str, str]:
    slug = f"{tag}-{k}"
    return {
        "slug": slug,
        "name": f"Partner {slug}",
        "legal_name": f"Partner {slug} Ltd",
        "contact_email": f"{slug}@partners.example",
        "website": f"https://partners.example/{slug}",
        "contract_reference": f"C-{slug}",
        "payout_reference": f"P-{slug}",
    }


def write(target: str, tag: str, seconds: float, out: Path) -> None:
    import django

    django.setup()
    from django.db import connection

    platform = target in ("ours", "baseline")
    insert, update = ours_writes(tag) if platform else peer_writes(target, tag)
    connection.ensure_connection()
    print("ready", flush=True)
    start_at = float(sys.stdin.readline())
    time.sleep(max(0.0, start_at - time.time()))
    deadline = start_at + seconds
    commits: list[tuple[int, float]] = []
    clock = time.time
    cpu_started = time.process_time()
    writes = 0
    row = None
    while clock() < deadline:
        if writes % 2 == 0:
            row, key = insert(writes)
        else:
            key = update(row, writes)
        if key is not None:
            commits.append((key, clock()))
        writes += 1
    cpu = time.process_time() - cpu_started
    out.write_text(json.dumps({"writes": writes, "cpu_seconds": cpu, "commits": commits}))
    # Connected until told to go, so that the runner can read its database backend's CPU time.
    print("done", flush=True)
    sys.stdin.readline()


def check(target: str, expected: int) -> dict:
    import django

    django.setup()
    if target not in ("ours", "baseline"):
        from auditlog.models import LogEntry

        from bench.audit.peers.models import HistoryPartner

        if target == "auditlog":
            records = LogEntry.objects.count()
        else:
            records = HistoryPartner.history.count()
        return {"records": records, "ok": records == expected}

    from audit.models import AuditEvent
    from audit.verify import chain_verify

    try:
        from audit.sealer import seal_pending
    except ImportError:  # the code before the sealer: events are sealed as they are appended
        seal_pending = None
    sealed_now = 0
    started = time.perf_counter()
    while seal_pending is not None:
        count = seal_pending().count
        if not count:
            break
        sealed_now += count
    sealing_seconds = time.perf_counter() - started
    records = AuditEvent.objects.count()
    unsealed = AuditEvent.objects.filter(sequence__isnull=True).count()
    started = time.perf_counter()
    report = chain_verify()
    verify_seconds = time.perf_counter() - started
    return {
        "records": records,
        "unsealed": unsealed,
        "sealed_by_check": sealed_now,
        "sealing_seconds": sealing_seconds,
        "verified_events": report.events,
        "verify_seconds": verify_seconds,
        "summary": report.summary(),
        "ok": report.ok and unsealed == 0 and records == expected and report.events == expected,
    }


if __name__ == "__main__":
    mode, target = sys.argv[1], sys.argv[2]
    if mode == "write":
        write(target, sys.argv[3], float(sys.argv[4]), Path(sys.argv[5]))
    elif mode == "check":
        print(json.dumps(check(target, int(sys.argv[3]))))
    else:
        sys.exit(f"unknown mode {mode!r}")
