"""The local moderation rules alone: types by content, archives, personal data in text."""

import gzip
import io
import struct
import tarfile
import zipfile

import pytest

from catalog.moderation import rules
from catalog.moderation.rules import (
    BLOCK,
    DEFAULT_CATEGORY_POLICIES,
    FLAG,
    PASS,
    ArchiveLimits,
    Reason,
)

LIMITS = ArchiveLimits(max_entries=50, max_ratio=100, max_unpacked_bytes=10 * 1024**2)
ELF = b"\x7fELF\x02\x01\x01" + bytes(100)


def zip_of(entries: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def tar_gz_of(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def inspect(data: bytes) -> list[Reason]:
    kind = rules.sniff(data[: rules.HEAD_BYTES])
    findings = rules.inspect_archive(kind, io.BytesIO(data), packed_size=len(data), limits=LIMITS)
    assert findings is not None
    return rules.archive_reasons(
        findings, packed_size=len(data), limits=LIMITS, policy=DEFAULT_CATEGORY_POLICIES["assets"]
    )


SNIFF_CASES = [
    (zip_of({"a": b"a"}), "zip"),
    (gzip.compress(b"x", mtime=0), "gzip"),
    (b"\x7fELF\x02\x01", "elf"),
    (b"MZ\x90\x00", "pe"),
    (b"\xcf\xfa\xed\xfe\x07", "macho"),
    (b"%PDF-1.7\n", "pdf"),
    (b"\x89PNG\r\n\x1a\n\x00", "png"),
    (b"GGUF\x03\x00", "gguf"),
    (struct.pack("<Q", 40) + b'{"weight": {}}', "safetensors"),
    (b"#!/bin/sh\nrm -rf /\n", "script"),
    (b"  <!DOCTYPE html><html>", "html"),
    (b"just some bytes", "data"),
]


@pytest.mark.parametrize(("head", "kind"), SNIFF_CASES, ids=[kind for _, kind in SNIFF_CASES])
def test_the_type_is_read_from_the_content(head, kind):
    assert rules.sniff(head[: rules.HEAD_BYTES]) == kind


def test_a_category_takes_its_nearest_ancestors_policy_or_the_default():
    policies = DEFAULT_CATEGORY_POLICIES
    assert rules.policy_for("/assets/textures/", policies) == ("assets", policies["assets"])
    assert rules.policy_for("/misc/", policies) == ("*", policies["*"])
    assert rules.type_allowed("png", policies["assets"].allowed)
    assert not rules.type_allowed("elf", policies["assets"].allowed)
    assert rules.type_allowed("elf", policies["software"].allowed)
    assert not policies["assets"].allows_executables


def test_a_clean_archive_breaks_no_rule():
    assert inspect(zip_of({"README.md": b"hello", "tex.png": b"\x89PNG\r\n\x1a\n"})) == []
    assert inspect(tar_gz_of({"README.md": b"hello"})) == []


def test_an_executable_inside_an_asset_pack_is_flagged():
    reasons = inspect(
        zip_of({"textures/a.png": b"\x89PNG\r\n\x1a\n", "setup.exe": b"MZ" + bytes(60)})
    )
    assert [(r.code, r.outcome) for r in reasons] == [("executable-in-archive", FLAG)]
    assert "setup.exe" in reasons[0].message
    reasons = inspect(tar_gz_of({"bin/tool": ELF}))
    assert [(r.code, r.outcome) for r in reasons] == [("executable-in-archive", FLAG)]


def test_a_zip_bomb_is_blocked_by_its_ratio_without_being_unpacked():
    bomb = zip_of({"zeros.bin": bytes(5 * 1024**2)})
    assert len(bomb) * LIMITS.max_ratio < 5 * 1024**2
    assert [(r.code, r.outcome) for r in inspect(bomb)] == [("archive-bomb", BLOCK)]


def test_a_gzip_bomb_is_stopped_at_its_budget():
    bomb = gzip.compress(bytes(20 * 1024**2))
    findings = rules.inspect_archive("gzip", io.BytesIO(bomb), packed_size=len(bomb), limits=LIMITS)
    assert findings.stopped == "unpacked"
    assert findings.unpacked <= len(bomb) * LIMITS.max_ratio + 1024**2  # one chunk past it
    reasons = rules.archive_reasons(
        findings, packed_size=len(bomb), limits=LIMITS, policy=DEFAULT_CATEGORY_POLICIES["*"]
    )
    assert [r.code for r in reasons] in (["archive-bomb"], ["archive-too-large-unpacked"])


def test_too_many_entries_are_blocked():
    many = zip_of({f"f{i}.txt": b"x" for i in range(LIMITS.max_entries + 1)})
    assert "archive-too-many-entries" in [r.code for r in inspect(many)]


def test_personal_data_in_text_is_flagged():
    reasons = rules.text_reasons(
        {
            "title": "Icons pack 2.0",
            "summary": "Write to jane.doe@example.com",
            "description": "Call +1 (555) 123-4567 for a discount. Version 1.2.3, 2026-01-01.",
        }
    )
    assert [(r.code, r.outcome, r.message) for r in reasons] == [
        ("personal-data-email", FLAG, "the summary contains an e-mail address"),
        ("personal-data-phone", FLAG, "the description contains a phone number"),
    ]
    assert rules.text_reasons({"title": "Pack 1.0.0, 10,000 sprites, 4096x4096"}) == []


def test_the_outcome_is_the_strictest_reason():
    assert rules.outcome_of([]) == PASS
    assert rules.outcome_of([Reason("a", FLAG, ""), Reason("b", BLOCK, "")]) == BLOCK
