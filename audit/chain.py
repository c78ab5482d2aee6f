"""The audit chain's encoding and its checks. Pure Python: no database, no settings, so an
export can be checked anywhere (docs/formats/audit-chain-v1.md documents the same rules).

An event's *record* is the JSON object

    {"action": str, "actor": {"id": str, "type": str}, "data": {...},
     "occurred_at": "YYYY-MM-DDTHH:MM:SS.ffffffZ", "prev_hash": 64 hex digits,
     "sequence": int, "subject": {"id": str, "type": str}}

and its hash is the lowercase hex SHA-256 of the record's canonical JSON
(marketplace.canonical: keys sorted, no whitespace, UTF-8, no floats). The first event's
prev_hash is 64 zeros. An export line is the canonical JSON of {"hash": ..., "record": ...}:
since "hash" sorts before "record", the record's bytes sit at a fixed place in the line and are
hashed as they are, without decoding and re-encoding them.
"""

import binascii
import gzip
import hashlib
import json
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from marketplace.canonical import canonical_json
from marketplace.jwk import PublicKey, b64url, b64url_decode

GENESIS_HASH = "0" * 64
CHECKPOINT_TYPE = "marketplace.audit.checkpoint"
DIGEST_TYPE = "marketplace.audit.digest"
DIGEST_VERSION = 1

_LINE_HEAD = b'{"hash":"'
_LINE_RECORD = b'","record":'
_PREV_HASH = b',"prev_hash":"'
_SEQUENCE = b'","sequence":'
_SUBJECT = b',"subject":{'


def format_time(moment: datetime) -> str:
    """UTC, always with six fractional digits, so one instant has exactly one spelling."""
    if moment.tzinfo is None:
        raise ValueError("audit times are timezone-aware")
    # The same text as strftime("%Y-%m-%dT%H:%M:%S.%fZ"), about three times faster.
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


# canonical_json's encoding without its walk over the value to refuse floats, for re-encoding
# stored events: each was checked when it was appended, and a value that is not canonical (a
# float written into the table by hand) gives another hash, which the check then reports.
encode_stored = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode


# The columns of an audit_event row, in the order `stored_record` takes them.
STORED_COLUMNS = (
    "sequence",
    "occurred_at",
    "actor_type",
    "actor_id",
    "action",
    "subject_type",
    "subject_id",
    "data",
    "prev_hash",
    "hash",
)


def stored_record(row: tuple[Any, ...]) -> tuple[int, str, str, bytes]:
    """(sequence, prev_hash, stored hash, record bytes) of a row read with STORED_COLUMNS:
    record_of's record, built inline and encoded with encode_stored, since the database check
    and the export run this once per event."""
    sequence, occurred_at, actor_type, actor_id, action, subject_type, subject_id = row[:7]
    data, prev_hash, stored_hash = row[7:]
    body = encode_stored(
        {
            "action": action,
            "actor": {"id": actor_id, "type": actor_type},
            "data": data,
            "occurred_at": format_time(occurred_at),
            "prev_hash": prev_hash,
            "sequence": sequence,
            "subject": {"id": subject_id, "type": subject_type},
        }
    ).encode()
    return sequence, prev_hash, stored_hash, body


def record_of(
    *,
    sequence: int,
    occurred_at: datetime,
    actor_type: str,
    actor_id: str,
    action: str,
    subject_type: str,
    subject_id: str,
    data: dict[str, Any],
    prev_hash: str,
) -> dict[str, Any]:
    return {
        "action": action,
        "actor": {"id": actor_id, "type": actor_type},
        "data": data,
        "occurred_at": format_time(occurred_at),
        "prev_hash": prev_hash,
        "sequence": sequence,
        "subject": {"id": subject_id, "type": subject_type},
    }


def record_hash(record: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(record)).hexdigest()


def export_line(record: dict[str, Any], record_hash_hex: str) -> bytes:
    return b"".join(
        (_LINE_HEAD, record_hash_hex.encode(), _LINE_RECORD, canonical_json(record), b"}\n")
    )


# --- Failures ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """The first problem found. `sequence` is the first bad event's number (None when the
    problem is not about one event, e.g. an unreadable digest)."""

    code: str  # hash_mismatch, chain_broken, gap, reordering, truncated, malformed,
    # bad_signature, unknown_key, file_hash, digest_chain, digest_mismatch, beyond_head,
    # checkpoint_chain, checkpoint_missing, witness_mismatch, witness_truncated
    reason: str
    sequence: int | None = None

    def __str__(self) -> str:
        where = f"sequence {self.sequence}: " if self.sequence is not None else ""
        return f"{where}{self.reason} [{self.code}]"


class MalformedLine(ValueError):
    pass


@dataclass
class ChainCheck:
    """Follows a run of events in file or table order and keeps the first failure.

    A missing sequence number is a gap unless it turns up later, which makes it a reordering;
    so after a jump the check goes on reading sequence numbers to tell the two apart.
    """

    after_sequence: int = 0
    after_hash: str = GENESIS_HASH
    count: int = 0
    first_sequence: int | None = None
    first_hash: str | None = None
    last_sequence: int | None = None
    last_hash: str | None = None
    failure: Failure | None = None
    _missing: int | None = field(default=None, repr=False)
    _after_missing: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        self._expected_sequence = self.after_sequence + 1
        self._expected_prev = self.after_hash

    @property
    def settled(self) -> bool:
        """True once the verdict cannot change, so the caller may stop reading."""
        return self.failure is not None and self._missing is None

    def add(self, sequence: int, prev_hash: str, stored_hash: str, computed_hash: str) -> None:
        self.count += 1
        if self._missing is not None:
            if sequence == self._missing:
                self._settle_missing(
                    "reordering",
                    f"event {sequence} comes after event {self._after_missing} instead of "
                    "before it",
                )
            return
        if self.failure is not None:
            return
        if self.first_sequence is None:
            self.first_sequence, self.first_hash = sequence, stored_hash
        if sequence != self._expected_sequence:
            if sequence > self._expected_sequence:
                self._missing, self._after_missing = self._expected_sequence, sequence
                self.failure = Failure(
                    "gap",
                    f"event {self._expected_sequence} is missing (the next one is {sequence})",
                    self._expected_sequence,
                )
            else:
                self.failure = Failure(
                    "reordering",
                    f"event {sequence} appears again, or out of order, where event "
                    f"{self._expected_sequence} was expected",
                    sequence,
                )
            return
        if computed_hash != stored_hash:
            self.failure = Failure(
                "hash_mismatch",
                f"the event's content does not match its hash (stored {stored_hash[:16]}…, "
                f"computed {computed_hash[:16]}…): it was changed after it was written",
                sequence,
            )
            return
        if prev_hash != self._expected_prev:
            self.failure = Failure(
                "chain_broken",
                f"prev_hash {prev_hash[:16]}… is not the hash of event {sequence - 1} "
                f"({self._expected_prev[:16]}…): an event was inserted, removed or rewritten",
                sequence,
            )
            return
        self.last_sequence, self.last_hash = sequence, stored_hash
        self._expected_sequence = sequence + 1
        self._expected_prev = stored_hash

    def _settle_missing(self, code: str, reason: str) -> None:
        self.failure = Failure(code, reason, self._missing)
        self._missing = None

    def finish(self, *, last_sequence: int | None = None, last_hash: str | None = None) -> None:
        """Closes the run; with an anchor (a checkpoint or a digest), checks the run ends there."""
        if self._missing is not None:
            self._missing = None  # it never turned up: the gap stands
        if self.failure is not None or last_sequence is None:
            return
        reached = self._expected_sequence - 1
        if reached < last_sequence:
            self.failure = Failure(
                "truncated",
                f"events {reached + 1} to {last_sequence} are missing at the end",
                reached + 1,
            )
        elif reached > last_sequence:
            self.failure = Failure(
                "digest_mismatch",
                f"the run goes on past event {last_sequence}, where its anchor says it ends",
                last_sequence + 1,
            )
        elif last_hash is not None and self._expected_prev != last_hash:
            self.failure = Failure(
                "hash_mismatch",
                f"event {last_sequence}'s hash differs from the signed one "
                f"({last_hash[:16]}…): it was rewritten",
                last_sequence,
            )


def parse_line(line: bytes) -> tuple[int, str, str, bytes]:
    """(sequence, prev_hash, hash, record bytes) of an export line, by position: the layout
    is fixed by the canonical encoding, and the record bytes are what the hash covers."""
    line = line.rstrip(b"\n")
    if not (line.startswith(_LINE_HEAD) and line[73:84] == _LINE_RECORD and line[-1:] == b"}"):
        raise MalformedLine('not a line of the form {"hash":"…","record":{…}}')
    body = line[84:-1]
    at = body.rfind(_PREV_HASH)
    if at < 0 or body[at + 78 : at + 91] != _SEQUENCE:
        raise MalformedLine("the record has no prev_hash followed by its sequence")
    end = body.find(_SUBJECT, at + 91)
    try:
        sequence = int(body[at + 91 : end]) if end > 0 else -1
    except ValueError:
        sequence = -1
    if sequence < 1:
        raise MalformedLine("the record's sequence is not a positive integer")
    return sequence, body[at + 14 : at + 78].decode("ascii"), line[9:73].decode("ascii"), body


def check_lines(lines: Iterable[bytes], check: ChainCheck) -> ChainCheck:
    """Feeds export lines to `check`. Lines that link up as expected are checked inline, on
    bytes, with no decoding; the first one that does not goes through `parse_line` and
    `ChainCheck.add`, which name what is wrong with it."""
    sha256, hexlify = hashlib.sha256, binascii.hexlify
    head, record_tag, prev_tag, sequence_tag, subject_tag = (
        _LINE_HEAD,
        _LINE_RECORD,
        _PREV_HASH,
        _SEQUENCE,
        _SUBJECT,
    )
    expected = check._expected_sequence
    expected_prev = check._expected_prev.encode("ascii")
    count = 0
    try:
        for number, line in enumerate(lines, start=1):
            # The fast path: the line is well formed, in sequence, linked, and its hash matches.
            end = len(line) - 1 if line[-1:] == b"\n" else len(line)
            if (
                check.failure is None
                and line.startswith(head)
                and line[73:84] == record_tag
                and line[end - 1 : end] == b"}"
            ):
                at = line.rfind(prev_tag, 84, end)
                if at > 0 and line[at + 78 : at + 91] == sequence_tag:
                    stop = line.find(subject_tag, at + 91, end)
                    digits = line[at + 91 : stop] if stop > 0 else b""
                    if (
                        digits.isdigit()
                        and int(digits) == expected
                        and line[at + 14 : at + 78] == expected_prev
                    ):
                        stored = line[9:73]
                        if hexlify(sha256(memoryview(line)[84 : end - 1]).digest()) == stored:
                            if check.first_sequence is None:
                                check.first_sequence, check.first_hash = expected, stored.decode()
                            expected += 1
                            expected_prev = stored
                            count += 1
                            continue
            # Anything else: hand the state over and let the careful path judge this line.
            _sync(check, count, expected, expected_prev)
            count = 0
            if check.settled:
                break
            try:
                sequence, prev_hash, stored_hash, body = parse_line(line)
            except (MalformedLine, UnicodeDecodeError) as exc:
                if check.failure is None:
                    after = check.last_sequence or check.after_sequence
                    check.failure = Failure(
                        "malformed",
                        f"line {number} (after event {after}) is unreadable: {exc}",
                        after + 1,
                    )
                break
            check.add(sequence, prev_hash, stored_hash, sha256(body).hexdigest())
            expected = check._expected_sequence
            expected_prev = check._expected_prev.encode("ascii")
    finally:
        # Also when reading the file fails midway, so the caller knows where it stopped.
        _sync(check, count, expected, expected_prev)
    return check


def _sync(check: ChainCheck, count: int, expected: int, expected_prev: bytes) -> None:
    """Writes what the fast path of check_lines accepted back into the check."""
    if not count:
        return
    check.count += count
    check._expected_sequence = expected
    check._expected_prev = expected_prev.decode("ascii")
    check.last_sequence, check.last_hash = expected - 1, check._expected_prev


# --- Checkpoints and digests -------------------------------------------------------------------


def checkpoint_message(
    *,
    sequence: int,
    chain_hash: str,
    signed_at: datetime,
    key_id: str,
    previous: str | None = None,
) -> bytes:
    """What a checkpoint's signature covers. `previous` (the link to the checkpoint before,
    checkpoint_link) is part of it for every checkpoint but those signed before checkpoints
    were chained, which have none."""
    message: dict[str, Any] = {
        "hash": chain_hash,
        "key_id": key_id,
        "sequence": sequence,
        "signed_at": format_time(signed_at),
        "type": CHECKPOINT_TYPE,
    }
    if previous is not None:
        message["previous"] = previous
    return canonical_json(message)


def checkpoint_link(signature: str) -> str:
    """The `previous` of the checkpoint after one with this signature: the SHA-256 of the
    signature's base64url text. An Ed25519 signature is a function of the message and the key,
    so it stands for the whole checkpoint, and the database can check the link itself."""
    return hashlib.sha256(signature.encode("ascii")).hexdigest()


def checkpoint_document(checkpoint: Any) -> dict[str, Any]:
    """A checkpoint as its witness copy holds it: the signed fields and the signature."""
    document = {
        "type": CHECKPOINT_TYPE,
        "sequence": checkpoint.sequence,
        "hash": checkpoint.hash,
        "signed_at": format_time(checkpoint.signed_at),
        "key_id": checkpoint.key_id,
        "signature": checkpoint.signature,
    }
    if checkpoint.previous is not None:
        document["previous"] = checkpoint.previous
    return document


def digest_message(digest: dict[str, Any]) -> bytes:
    """What a digest's signature covers: the digest without its signature."""
    return canonical_json({key: value for key, value in digest.items() if key != "signature"})


def digest_encode(digest: dict[str, Any]) -> bytes:
    return canonical_json(digest)


def digest_sign(digest: dict[str, Any], sign: Any) -> dict[str, Any]:
    return {**digest, "signature": b64url(sign(digest_message(digest)))}


def signature_problem(
    message: bytes, signature: str, key_id: str, keys: dict[str, PublicKey]
) -> str | None:
    key = keys.get(key_id)
    if key is None:
        return f"signed by key {key_id!r}, which is not among the {len(keys)} known key(s)"
    try:
        raw = b64url_decode(signature)
    except ValueError:
        return "the signature is not base64url"
    if not key.verifies(raw, message):
        return f"the signature does not verify with key {key_id!r}"
    return None


_DIGEST_FIELDS = {
    "version": int,
    "type": str,
    "period_start": str,
    "period_end": str,
    "file": str,
    "file_sha256": str,
    "event_count": int,
    "previous_sequence": int,
    "previous_hash": str,
    "key_id": str,
    "signature": str,
}


def digest_read(path: Path) -> tuple[dict[str, Any], bytes]:
    """The digest and its exact bytes; raises ValueError naming what is wrong with it."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist") from None
    except OSError as exc:
        raise ValueError(f"{path} cannot be read: {exc.strerror}") from None
    try:
        digest = json.loads(raw)
    except ValueError:
        raise ValueError(f"{path} is not JSON") from None
    if not isinstance(digest, dict):
        raise ValueError(f"{path} is not a JSON object")
    for name, kind in _DIGEST_FIELDS.items():
        if not isinstance(digest.get(name), kind) or isinstance(digest.get(name), bool):
            raise ValueError(f"{path}: the field {name!r} is missing or not a {kind.__name__}")
    if digest["type"] != DIGEST_TYPE or digest["version"] != DIGEST_VERSION:
        raise ValueError(f"{path} is not a version {DIGEST_VERSION} audit digest")
    return digest, raw


@dataclass
class ExportReport:
    export: Path
    digest: dict[str, Any] | None = None
    digest_sha256: str = ""
    events: int = 0
    failure: Failure | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None


def _gzip_lines(path: Path) -> Iterator[bytes]:
    with gzip.open(path, "rb") as handle:
        yield from handle


def _file_sha256(handle: BinaryIO) -> str:
    return hashlib.file_digest(handle, "sha256").hexdigest()


def verify_export(export: Path, keys: dict[str, PublicKey]) -> ExportReport:
    """Checks FILE against FILE.digest.json: the digest's signature, the file's SHA-256, and
    every line's hash and link, from the digest's previous event to its last one."""
    report = ExportReport(export)
    digest_path = export.with_name(export.name + ".digest.json")
    try:
        digest, raw = digest_read(digest_path)
    except ValueError as exc:
        report.failure = Failure("malformed", f"the digest is unusable: {exc}")
        return report
    report.digest, report.digest_sha256 = digest, hashlib.sha256(raw).hexdigest()
    problem = signature_problem(digest_message(digest), digest["signature"], digest["key_id"], keys)
    if problem is not None:
        code = "unknown_key" if digest["key_id"] not in keys else "bad_signature"
        report.failure = Failure(code, f"the digest {problem}")
        return report
    try:
        with export.open("rb") as handle:
            file_sha256 = _file_sha256(handle)
    except OSError as exc:
        report.failure = Failure("malformed", f"{export} cannot be read: {exc.strerror}")
        return report
    check = ChainCheck(
        after_sequence=digest["previous_sequence"], after_hash=digest["previous_hash"]
    )
    try:
        check_lines(_gzip_lines(export), check)
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        if check.failure is None:
            check.failure = Failure(
                "malformed",
                f"the file is not readable gzip after event "
                f"{check.last_sequence or check.after_sequence}: {exc}",
                (check.last_sequence or check.after_sequence) + 1,
            )
    last_sequence = digest.get("last_sequence")
    if not isinstance(last_sequence, int) or isinstance(last_sequence, bool):
        last_sequence = digest["previous_sequence"]  # an empty period ends where it began
    check.finish(last_sequence=last_sequence, last_hash=digest.get("last_hash"))
    report.events = check.count
    if check.failure is not None:
        report.failure = check.failure
    elif file_sha256 != digest["file_sha256"]:
        report.failure = Failure(
            "file_hash", "the file's SHA-256 is not the one in its digest, though its events chain"
        )
    elif check.count != digest["event_count"]:
        report.failure = Failure(
            "digest_mismatch",
            f"the file holds {check.count} events; its digest says {digest['event_count']}",
        )
    return report


def digest_chain_problem(previous: ExportReport, current: ExportReport) -> Failure | None:
    """Two consecutive exports: the second names the first's digest and starts where it ended."""
    if previous.digest is None or current.digest is None:
        return Failure("malformed", "an export without a readable digest cannot be chained")
    if current.digest.get("previous_digest_sha256") != previous.digest_sha256:
        return Failure(
            "digest_chain",
            f"{current.export.name}'s digest does not name {previous.export.name}'s digest as "
            "its predecessor: an export between them is missing or was replaced",
        )
    previous_end = previous.digest.get("last_sequence") or previous.digest["previous_sequence"]
    if current.digest["previous_sequence"] != previous_end:
        return Failure(
            "digest_chain",
            f"{current.export.name} starts after event {current.digest['previous_sequence']}, "
            f"but {previous.export.name} ends at event {previous_end}",
            previous_end + 1,
        )
    return None
