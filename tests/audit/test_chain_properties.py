"""Any single change to a run of events is detected: a modified field, a deleted event, an
inserted event or a swapped pair, whether the events are read back as records (the database
check) or as export lines (the offline check)."""

import copy
import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from audit.chain import (
    GENESIS_HASH,
    ChainCheck,
    check_lines,
    export_line,
    parse_line,
    record_hash,
    record_of,
)
from marketplace.canonical import canonical_json

START = datetime(2026, 11, 1, tzinfo=UTC)

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63), st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
event_fields = st.fixed_dictionaries(
    {
        "actor_type": st.sampled_from(["staff", "buyer", "service", "system"]),
        "actor_id": st.text(max_size=36),
        "action": st.text(min_size=1, max_size=24),
        "subject_type": st.text(min_size=1, max_size=12),
        "subject_id": st.text(max_size=20),
        "data": st.dictionaries(st.text(max_size=10), json_values, max_size=4),
    }
)


def build_chain(events: list[dict[str, Any]]) -> list[tuple[dict[str, Any], str]]:
    chain, prev = [], GENESIS_HASH
    for index, fields in enumerate(events, start=1):
        record = record_of(
            sequence=index,
            occurred_at=START + timedelta(milliseconds=index),
            prev_hash=prev,
            **fields,
        )
        prev = record_hash(record)
        chain.append((record, prev))
    return chain


def check_records(chain: list[tuple[dict[str, Any], str]], *, last: tuple[int, str]) -> ChainCheck:
    """The database check: recompute each hash from the record's fields."""
    check = ChainCheck()
    for record, stored in chain:
        check.add(
            record["sequence"],
            record["prev_hash"],
            stored,
            hashlib.sha256(canonical_json(record)).hexdigest(),
        )
    check.finish(last_sequence=last[0], last_hash=last[1])
    return check


def check_export(lines: list[bytes], *, last: tuple[int, str]) -> ChainCheck:
    check = check_lines(lines, ChainCheck())
    check.finish(last_sequence=last[0], last_hash=last[1])
    return check


def mutated_value(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, dict):
        return {**value, "tampered": True}
    return "tampered"


MUTABLE_PATHS = [
    ("action",),
    ("actor", "id"),
    ("actor", "type"),
    ("data",),
    ("occurred_at",),
    ("prev_hash",),
    ("sequence",),
    ("subject", "id"),
    ("subject", "type"),
]


@settings(max_examples=300, deadline=None)
@given(
    events=st.lists(event_fields, min_size=2, max_size=12),
    data=st.data(),
)
def test_any_single_change_is_detected(events: list[dict[str, Any]], data: st.DataObject) -> None:
    chain = build_chain(events)
    anchor = (len(chain), chain[-1][1])
    lines = [export_line(record, stored) for record, stored in chain]
    assert check_records(chain, last=anchor).failure is None
    assert check_export(lines, last=anchor).failure is None

    kind = data.draw(st.sampled_from(["modify", "modify_rehash", "delete", "insert", "swap"]))
    position = data.draw(st.integers(0, len(chain) - 1))
    tampered = copy.deepcopy(chain)
    if kind in ("modify", "modify_rehash"):
        path = data.draw(st.sampled_from(MUTABLE_PATHS))
        record, stored = tampered[position]
        target = record
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = mutated_value(target[path[-1]])
        # An attacker who also recomputes the hash of what they changed.
        tampered[position] = (record, record_hash(record) if kind == "modify_rehash" else stored)
    elif kind == "delete":
        del tampered[position]
    elif kind == "insert":
        forged_fields = data.draw(event_fields)
        previous = tampered[position - 1][1] if position else GENESIS_HASH
        forged = record_of(
            sequence=position + 1,
            occurred_at=START + timedelta(milliseconds=position + 1),
            prev_hash=previous,
            **forged_fields,
        )
        tampered.insert(position, (forged, record_hash(forged)))
    else:
        other = data.draw(st.integers(0, len(chain) - 1).filter(lambda index: index != position))
        tampered[position], tampered[other] = tampered[other], tampered[position]

    by_records = check_records(tampered, last=anchor)
    by_lines = check_export([export_line(r, h) for r, h in tampered], last=anchor)
    assert by_records.failure is not None, kind
    assert by_lines.failure is not None, kind
    assert by_records.failure.sequence is not None
    # Both checks read the same run, so they name the same first bad event.
    assert by_lines.failure.sequence == by_records.failure.sequence


def test_a_deleted_event_is_reported_as_a_gap_at_its_sequence() -> None:
    chain = build_chain(
        [
            {
                "actor_type": "system",
                "actor_id": "",
                "action": "a",
                "subject_type": "t",
                "subject_id": str(i),
                "data": {},
            }
            for i in range(5)
        ]
    )
    del chain[2]
    check = check_records(chain, last=(5, "unused"))
    assert check.failure is not None
    assert (check.failure.code, check.failure.sequence) == ("gap", 3)


def test_a_swapped_pair_is_reported_as_a_reordering() -> None:
    chain = build_chain(
        [
            {
                "actor_type": "system",
                "actor_id": "",
                "action": "a",
                "subject_type": "t",
                "subject_id": str(i),
                "data": {},
            }
            for i in range(5)
        ]
    )
    chain[1], chain[3] = chain[3], chain[1]
    check = check_records(chain, last=(5, chain[-1][1]))
    assert check.failure is not None
    assert (check.failure.code, check.failure.sequence) == ("reordering", 2)


def test_the_line_parser_reads_what_the_encoder_writes() -> None:
    record = record_of(
        sequence=42,
        occurred_at=START,
        actor_type="staff",
        actor_id='a"b',
        action="sku.activated",
        subject_type="sku",
        subject_id=',"prev_hash":"',
        data={"nested": {"prev_hash": "x", "sequence": 7}, ',"prev_hash":"': 1},
        prev_hash="ab" * 32,
    )
    line = export_line(record, record_hash(record))
    sequence, prev_hash, stored, body = parse_line(line)
    assert (sequence, prev_hash, stored) == (42, "ab" * 32, record_hash(record))
    assert body == canonical_json(record)


def test_the_record_encoding_matches_the_documented_bytes() -> None:
    """A fixed vector, so that a change to the encoding cannot pass unnoticed
    (docs/formats/audit-chain-v1.md)."""
    record = record_of(
        sequence=1,
        occurred_at=datetime(2026, 11, 22, 8, 30, tzinfo=UTC),
        actor_type="staff",
        actor_id="3f1c1a9e-0000-4000-8000-000000000001",
        action="sku.activated",
        subject_type="sku",
        subject_id="12",
        data={"slug": "mesh-tools", "price": 4900, "currency": "EUR", "note": "é"},
        prev_hash=GENESIS_HASH,
    )
    assert (
        canonical_json(record)
        == (
            '{"action":"sku.activated","actor":{"id":"3f1c1a9e-0000-4000-8000-000000000001",'
            '"type":"staff"},"data":{"currency":"EUR","note":"é","price":4900,"slug":"mesh-tools"},'
            '"occurred_at":"2026-11-22T08:30:00.000000Z","prev_hash":"'
            + "0" * 64
            + '","sequence":1,"subject":{"id":"12","type":"sku"}}'
        ).encode()
    )
    assert record_hash(record) == "4cf4db97c24f5f534a3198d617e464b1a62ff765a8dc97e36cf506257f13d2fb"
