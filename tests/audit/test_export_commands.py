"""`export_audit_batch` and `audit_verify --export`: the round trip, the offline check with no
database, and every bad input or damaged file giving a clear message and a non-zero exit."""

import gzip
import json
import os
import subprocess
import sys
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import transaction
from django.utils import timezone

from audit.exports import audit_export_day
from audit.models import ChainHead
from audit.sealer import seals_later
from audit.services import audit_append
from audit.signing_keys import signing_key_rotate
from marketplace.actors import Actor
from marketplace.keystore import jwks_of
from marketplace.models import SigningKey, SigningKeyPurpose
from tests.support.audit import seal_dated

# Transactional: on PostgreSQL the tables' owner dates the events on their days (seal_dated).
pytestmark = pytest.mark.django_db(transaction=True)

BASE_DIR = Path(__file__).resolve().parent.parent.parent


# --- Helpers -----------------------------------------------------------------------------------


def today() -> date:
    return timezone.now().astimezone(UTC).date()


def at(day: date, hour: int = 12) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


@contextmanager
def clock_at(moment: datetime) -> Iterator[None]:
    """Appends date their events with timezone.now(): this places them on a chosen day."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(timezone, "now", lambda: moment)
        yield


def append_at(moment: datetime, count: int = 1) -> None:
    events = []
    with clock_at(moment):
        for index in range(count):
            with transaction.atomic():
                events.append(
                    audit_append(
                        actor=Actor.system("test"),
                        action="order.paid",
                        subject=("order", index),
                        data={"index": index},
                    )
                )
    # Sealed at once, as SQLite's appends are: a later append is never dated before them.
    seal_dated(events, moment)


@dataclass
class Run:
    code: int
    out: str
    err: str


def run(*args: str) -> Run:
    """A command as `manage.py` runs it: a CommandError is its message and exit code 1; any
    other exception would reach the test (as it would print a traceback)."""
    out, err = StringIO(), StringIO()
    try:
        call_command(*args, stdout=out, stderr=err)
    except CommandError as exc:
        return Run(exc.returncode, out.getvalue(), f"CommandError: {exc}")
    return Run(0, out.getvalue(), err.getvalue())


def manage(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """manage.py in its own process, with a database URL that leads nowhere usable."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "MARKETPLACE_DATABASE_URL": "postgres://postgres@127.0.0.1:5432/mkp_no_such_database",
        "MARKETPLACE_TEST_DATA_DIR": str(tmp_path / "process-data"),
    }
    return subprocess.run(
        [sys.executable, str(BASE_DIR / "manage.py"), *args],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def write_jwks(folder: Path, keys: list[SigningKey] | None = None) -> Path:
    path = folder / "jwks.json"
    if keys is None:
        keys = list(SigningKey.objects.filter(purpose=SigningKeyPurpose.AUDIT))
    path.write_text(json.dumps(jwks_of(keys)))
    return path


def digest_of(path: Path) -> Path:
    return Path(f"{path}.digest.json")


def lines_of(path: Path) -> list[bytes]:
    with gzip.open(path) as handle:
        return handle.read().splitlines(keepends=True)


def regzip(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(gzip.compress(b"".join(lines), mtime=0))


@pytest.fixture(autouse=True)
def _chain_head_in_the_past(db: None) -> None:
    """A new chain head is dated when it is created, and appends never date an event before
    the head: created in the past, it lets the tests place events on past days. On PostgreSQL
    the platform's role may not write the head, and none is needed: the first seal makes it,
    dated by the events it seals."""
    if seals_later():
        return
    ChainHead.objects.create(id=1, occurred_at=datetime(2000, 1, 1, tzinfo=UTC))


@pytest.fixture(autouse=True)
def _local_exports(settings: Any, tmp_path: Path) -> None:
    settings.AUDIT_BUCKET = ""
    settings.AUDIT_EXPORT_DIR = tmp_path / "audit"


@pytest.fixture
def exported(tmp_path: Path) -> tuple[Path, Path]:
    """Five events of yesterday exported, and the JWK Set that checks them."""
    yesterday = today() - timedelta(days=1)
    append_at(at(yesterday), 5)
    out = tmp_path / "batch.jsonl.gz"
    result = run(
        "export_audit_batch", "--from", str(yesterday), "--to", str(today()), "--out", str(out)
    )
    assert result.code == 0, result.err
    return out, write_jwks(tmp_path)


# --- export_audit_batch ------------------------------------------------------------------------


def test_an_exported_batch_verifies_offline(tmp_path):
    yesterday = today() - timedelta(days=1)
    append_at(at(yesterday - timedelta(days=1)), 2)  # before the batch
    append_at(at(yesterday, 8), 3)
    append_at(at(today(), 0))  # after it
    out = tmp_path / "batch.jsonl.gz"

    result = run(
        "export_audit_batch",
        "--from",
        f"{yesterday}T00:00:00Z",
        "--to",
        f"{today()}T00:00:00",
        "--out",
        str(out),
    )

    assert result.code == 0, result.err
    assert f"Exported 3 event(s), #3 to #5, to {out}" in result.out
    assert f"digest {digest_of(out)}" in result.out
    assert "previous digest none: no daily export ends at --from" in result.out
    digest = json.loads(digest_of(out).read_bytes())
    assert (digest["previous_sequence"], digest["first_sequence"], digest["last_sequence"]) == (
        2,
        3,
        5,
    )
    assert digest["period_start"] == f"{yesterday}T00:00:00.000000Z"
    assert digest["file"] == "batch.jsonl.gz"
    assert digest["previous_digest_sha256"] is None
    assert [json.loads(line)["record"]["sequence"] for line in lines_of(out)] == [3, 4, 5]
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

    verified = run("audit_verify", "--export", str(out), "--jwks", str(write_jwks(tmp_path)))

    assert verified.code == 0, verified.err
    assert f"OK: {out} holds 3 event(s)" in verified.out


def test_a_batch_starting_where_a_daily_export_ends_chains_onto_it(tmp_path):
    day1, day2 = today() - timedelta(days=2), today() - timedelta(days=1)
    append_at(at(day1), 2)
    append_at(at(day2), 2)
    daily = audit_export_day(day=day1)
    assert daily is not None
    out = tmp_path / "batch.jsonl.gz"

    result = run("export_audit_batch", "--from", str(day2), "--to", str(today()), "--out", str(out))

    assert result.code == 0, result.err
    assert json.loads(digest_of(out).read_bytes())["previous_digest_sha256"] == (
        daily.digest_sha256
    )
    daily_path = Path(daily.location)
    verified = run(
        "audit_verify",
        "--export",
        str(daily_path),
        "--export",
        str(out),
        "--jwks",
        str(write_jwks(tmp_path)),
    )
    assert verified.code == 0, verified.err
    assert "the digest chain of 2 exports is unbroken" in verified.out


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        ("2025-03-02", "2025-03-01", "--from (2025-03-02T00:00:00.000000Z) must be before --to"),
        ("2025-03-01T10:00:00Z", "2025-03-01T10:00:00Z", "must be before --to"),
        ("yesterday", "2025-03-01", "--from 'yesterday' is not an ISO 8601 date or date-time"),
        ("2025-03-01", "2025-02-30", "--to '2025-02-30' is not an ISO 8601 date"),
    ],
)
def test_a_bad_range_is_refused(tmp_path, start, end, message):
    folder = tmp_path / "out"
    folder.mkdir()
    out = folder / "batch.jsonl.gz"

    result = run("export_audit_batch", "--from", start, "--to", end, "--out", str(out))

    assert result.code == 1
    assert message in result.err
    assert list(folder.iterdir()) == []


def test_an_empty_range_is_refused(tmp_path):
    append_at(at(today() - timedelta(days=3)))
    folder = tmp_path / "out"
    folder.mkdir()
    out = folder / "batch.jsonl.gz"
    day = today() - timedelta(days=2)

    result = run("export_audit_batch", "--from", str(day), "--to", str(today()), "--out", str(out))

    assert result.code == 1
    assert f"No audit events between {day}T00:00:00.000000Z and" in result.err
    assert "nothing to export" in result.err
    assert list(folder.iterdir()) == []


def test_a_range_that_is_not_over_is_refused(tmp_path):
    append_at(at(today() - timedelta(days=1)))
    tomorrow = today() + timedelta(days=1)

    result = run(
        "export_audit_batch",
        "--from",
        "2020-01-01",
        "--to",
        str(tomorrow),
        "--out",
        str(tmp_path / "b.gz"),
    )

    assert result.code == 1
    assert "which is in the future" in result.err


def test_an_existing_file_is_never_overwritten(exported, tmp_path):
    out, _ = exported
    before = out.read_bytes(), digest_of(out).read_bytes()
    yesterday = today() - timedelta(days=1)

    again = run(
        "export_audit_batch", "--from", str(yesterday), "--to", str(today()), "--out", str(out)
    )
    out.rename(tmp_path / "moved.jsonl.gz")
    digest_only = run(
        "export_audit_batch", "--from", str(yesterday), "--to", str(today()), "--out", str(out)
    )

    assert again.code == 1
    assert f"{out} already exists; exports are never overwritten." in again.err
    assert digest_only.code == 1
    assert f"{digest_of(out)} already exists" in digest_only.err
    assert ((tmp_path / "moved.jsonl.gz").read_bytes(), digest_of(out).read_bytes()) == before
    assert not out.exists()


def test_a_missing_folder_is_refused(tmp_path):
    append_at(at(today() - timedelta(days=1)))
    out = tmp_path / "missing" / "batch.jsonl.gz"

    result = run(
        "export_audit_batch", "--from", "2020-01-01", "--to", str(today()), "--out", str(out)
    )

    assert result.code == 1
    assert f"The folder of --out, {out.parent}, does not exist." in result.err


def test_bad_input_exits_non_zero_without_a_traceback(tmp_path):
    process = manage(
        tmp_path, "export_audit_batch", "--from", "2025-03-02", "--to", "2025-03-01", "--out", "x"
    )

    assert process.returncode == 1
    assert "CommandError: --from (2025-03-02T00:00:00.000000Z) must be before --to" in (
        process.stderr
    )
    assert "Traceback" not in process.stderr


# --- audit_verify --export ---------------------------------------------------------------------


def test_the_offline_check_needs_no_database(exported, tmp_path):
    out, jwks = exported

    process = manage(tmp_path, "audit_verify", "--export", str(out), "--jwks", str(jwks))

    assert process.returncode == 0, process.stderr
    assert f"OK: {out} holds 5 event(s)" in process.stdout


def test_a_damaged_export_fails_offline_without_a_traceback(exported, tmp_path):
    out, jwks = exported
    lines = lines_of(out)
    regzip(out, lines[:2] + lines[3:])

    process = manage(tmp_path, "audit_verify", "--export", str(out), "--jwks", str(jwks))

    assert process.returncode == 1
    assert "sequence 3: event 3 is missing (the next one is 4) [gap]" in process.stderr
    assert "Traceback" not in process.stderr


def _flip_a_payload_byte(out: Path) -> None:
    """The first flipped bit of the compressed data that zlib itself rejects."""
    raw = out.read_bytes()
    for position in range(10, len(raw) - 8):
        damaged = raw[:position] + bytes([raw[position] ^ 0x40]) + raw[position + 1 :]
        try:
            gzip.decompress(damaged)
        except zlib.error:
            out.write_bytes(damaged)
            return
        except (OSError, EOFError):
            continue
    raise AssertionError("no flipped bit makes the data invalid deflate")


def _break_the_crc(out: Path) -> None:
    raw = bytearray(out.read_bytes())
    raw[-8] ^= 0x01
    out.write_bytes(bytes(raw))


def _truncate(out: Path) -> None:
    out.write_bytes(out.read_bytes()[: out.stat().st_size // 2])


def _delete_a_line(out: Path) -> None:
    lines = lines_of(out)
    regzip(out, lines[:3] + lines[4:])


def _modify_an_event(out: Path) -> None:
    lines = lines_of(out)
    lines[1] = lines[1].replace(b'"data":{"index":1}', b'"data":{"index":7}')
    regzip(out, lines)


def _append_a_line(out: Path) -> None:
    lines = lines_of(out)
    regzip(out, [*lines, lines[-1]])


def _rewrite_the_file_hash(out: Path) -> None:
    digest = json.loads(digest_of(out).read_bytes())
    digest["event_count"] = 4
    digest_of(out).write_text(json.dumps(digest))


def _digest_not_json(out: Path) -> None:
    digest_of(out).write_bytes(b'{"version": 1, "type": ')


def _digest_field_missing(out: Path) -> None:
    digest = json.loads(digest_of(out).read_bytes())
    del digest["file_sha256"]
    digest_of(out).write_text(json.dumps(digest))


def _digest_missing(out: Path) -> None:
    digest_of(out).unlink()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_flip_a_payload_byte, "the file is not readable gzip after event"),
        (_break_the_crc, "the file is not readable gzip after event 5: CRC check failed"),
        (_truncate, "the file is not readable gzip after event"),
        (_delete_a_line, "sequence 4: event 4 is missing (the next one is 5) [gap]"),
        (_modify_an_event, "sequence 2: the event's content does not match its hash"),
        (_append_a_line, "event 5 appears again, or out of order"),
        (_rewrite_the_file_hash, "the digest the signature does not verify with key"),
        (_digest_not_json, "the digest is unusable:"),
        (_digest_field_missing, "the field 'file_sha256' is missing or not a str"),
        (_digest_missing, "batch.jsonl.gz.digest.json does not exist"),
    ],
    ids=lambda value: getattr(value, "__name__", "")[1:] or None,
)
def test_a_damaged_export_or_digest_is_named(exported, damage, message):
    out, jwks = exported
    damage(out)

    result = run("audit_verify", "--export", str(out), "--jwks", str(jwks))

    assert result.code == 1
    assert f"{out} does not verify: " in result.err
    assert message in result.err


def test_a_digest_signed_by_an_unknown_key_is_refused(exported, tmp_path):
    out, _ = exported
    signer = SigningKey.objects.get(purpose=SigningKeyPurpose.AUDIT)
    new_key, _ = signing_key_rotate(purpose=SigningKeyPurpose.AUDIT)

    result = run(
        "audit_verify", "--export", str(out), "--jwks", str(write_jwks(tmp_path, [new_key]))
    )

    assert result.code == 1
    assert (
        f"the digest signed by key {signer.kid!r}, which is not among the 1 known key(s) "
        "[unknown_key]"
    ) in result.err
