"""The local moderation rules: what a file is by its content (magic bytes, never its name),
whether its category accepts it, whether an archive is a bomb or hides executables, and whether
a listing's text carries personal data.

Pure functions over bytes, streams and text; no database, no settings read here (the backend
passes the limits in), so each rule is testable alone.
"""

import bz2
import gzip
import io
import lzma
import re
import struct
import tarfile
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import BinaryIO

# --- Outcomes ----------------------------------------------------------------------------------

PASS = "pass"  # noqa: S105 - an outcome, not a password
FLAG = "flag"
BLOCK = "block"
_SEVERITY = {PASS: 0, FLAG: 1, BLOCK: 2}


@dataclass(frozen=True)
class Reason:
    """One rule an item broke: a stable code (documented in docs/moderation.md), the outcome
    the rule asks for, and what was found, in plain words."""

    code: str
    outcome: str
    message: str

    def as_json(self) -> dict[str, str]:
        return {"code": self.code, "outcome": self.outcome, "message": self.message}


def outcome_of(reasons: Iterable[Reason]) -> str:
    """The strictest outcome any reason asks for; pass without reasons."""
    return max((reason.outcome for reason in reasons), key=_SEVERITY.__getitem__, default=PASS)


# --- File types by content ---------------------------------------------------------------------

HEAD_BYTES = 512

# Each detected type belongs to a group; a category's allow list names groups or single types.
TYPE_GROUPS: dict[str, frozenset[str]] = {
    "archive": frozenset({"zip", "gzip", "bzip2", "xz", "zstd", "7z", "tar"}),
    "image": frozenset({"png", "jpeg", "gif", "webp"}),
    "audio": frozenset({"wav", "ogg", "flac", "mp3"}),
    "video": frozenset({"mp4"}),
    "3d": frozenset({"glb"}),
    "document": frozenset({"pdf"}),
    "model": frozenset({"gguf", "safetensors"}),
    "executable": frozenset({"elf", "pe", "macho"}),
    "script": frozenset({"script", "html"}),
    # Bytes with no signature we know: raw weights, payloads, proprietary formats.
    "data": frozenset({"data"}),
}
EXECUTABLE_TYPES = TYPE_GROUPS["executable"]

_MACHO = (
    b"\xfe\xed\xfa\xce",
    b"\xfe\xed\xfa\xcf",
    b"\xce\xfa\xed\xfe",
    b"\xcf\xfa\xed\xfe",
    b"\xca\xfe\xba\xbe",  # a universal binary (also a Java class file: both run code)
)


def sniff(head: bytes) -> str:
    """The type of a file from its first bytes (HEAD_BYTES are enough); "data" when no known
    signature matches. The filename plays no part."""
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")):
        return "zip"
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"BZh"):
        return "bzip2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd"
    if head.startswith(b"7z\xbc\xaf\x27\x1c"):
        return "7z"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    if head.startswith(b"\x7fELF"):
        return "elf"
    if head.startswith(b"MZ"):
        return "pe"
    if head.startswith(_MACHO):
        return "macho"
    if head.startswith(b"%PDF-"):
        return "pdf"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "webp"
    if head.startswith(b"RIFF") and head[8:12] == b"WAVE":
        return "wav"
    if head.startswith(b"OggS"):
        return "ogg"
    if head.startswith(b"fLaC"):
        return "flac"
    if head.startswith(b"ID3") or head[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2"):
        return "mp3"
    if head[4:8] == b"ftyp":
        return "mp4"
    if head.startswith(b"glTF"):
        return "glb"
    if head.startswith(b"GGUF"):
        return "gguf"
    if _is_safetensors(head):
        return "safetensors"
    if head.startswith(b"#!"):
        return "script"
    if head.lstrip()[:14].lower().startswith((b"<!doctype html", b"<html")):
        return "html"
    return "data"


def _is_safetensors(head: bytes) -> bool:
    # An 8-byte little-endian header length, then the JSON header.
    if len(head) < 10:
        return False
    (length,) = struct.unpack("<Q", head[:8])
    return 2 <= length <= 100 * 1024 * 1024 and head[8:10] == b'{"'


def type_allowed(kind: str, allowed: Iterable[str]) -> bool:
    """Whether a detected type is in an allow list of groups and single types."""
    return any(kind == name or kind in TYPE_GROUPS.get(name, ()) for name in allowed)


# --- Categories --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CategoryPolicy:
    """What a category accepts: type groups or types, and the largest artifact in bytes."""

    allowed: tuple[str, ...]
    max_bytes: int

    @property
    def allows_executables(self) -> bool:
        return any(type_allowed(kind, self.allowed) for kind in EXECUTABLE_TYPES)


GIB = 1024**3
# Keyed by category slug; a category without an entry takes its nearest ancestor's, and one
# with none in its path takes "*". MARKETPLACE_MODERATION_CATEGORY_TYPES replaces entries.
DEFAULT_CATEGORY_POLICIES: dict[str, CategoryPolicy] = {
    "software": CategoryPolicy(("archive", "executable", "data"), 4 * GIB),
    "models": CategoryPolicy(("archive", "model", "data"), 10 * GIB),
    "assets": CategoryPolicy(("archive", "image", "audio", "video", "3d", "document"), 4 * GIB),
    "*": CategoryPolicy(("archive", "data"), 4 * GIB),
}


def policy_for(path: str, policies: Mapping[str, CategoryPolicy]) -> tuple[str, CategoryPolicy]:
    """The policy of a category by its path (`/assets/textures/`): its own entry, else its
    nearest ancestor's, else "*". Returns the key used and the policy."""
    for slug in reversed([part for part in path.split("/") if part]):
        if slug in policies:
            return slug, policies[slug]
    return "*", policies.get("*", DEFAULT_CATEGORY_POLICIES["*"])


# --- Archives ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArchiveLimits:
    max_entries: int
    max_ratio: int  # unpacked bytes per packed byte, over the whole archive
    max_unpacked_bytes: int


@dataclass
class ArchiveFindings:
    entries: int = 0
    unpacked: int = 0
    executables: list[str] = field(default_factory=list)
    stopped: str = ""  # the reason inspection stopped early (a limit passed), if it did


EXECUTABLES_LISTED = 10
_CHUNK = 1024 * 1024


def inspect_archive(
    kind: str, stream: BinaryIO, *, packed_size: int, limits: ArchiveLimits
) -> ArchiveFindings | None:
    """Counts an archive's entries and unpacked bytes and finds executables among its entries,
    stopping as soon as a limit is passed (a bomb is never unpacked whole). None for a type
    that is not inspected (7z, zstd). `stream` is at the file's start; it is read, not closed.
    """
    findings = ArchiveFindings()
    # Past this many unpacked bytes the archive breaks a limit: ratio or total.
    budget = min(limits.max_unpacked_bytes, max(packed_size, 1) * limits.max_ratio)
    try:
        if kind == "zip":
            _inspect_zip(stream, findings, limits, budget)
        elif kind == "tar":
            _inspect_tar(stream, findings, limits, budget, mode="r|")
        elif kind in ("gzip", "bzip2", "xz"):
            _inspect_compressed(kind, stream, findings, limits, budget)
        else:
            return None
    except _LimitPassed as passed:
        findings.stopped = str(passed)
    return findings


class _LimitPassed(Exception):
    pass


def _count(findings: ArchiveFindings, limits: ArchiveLimits, budget: int, *, entry: int) -> None:
    findings.entries += entry
    if findings.entries > limits.max_entries:
        raise _LimitPassed("entries")
    if findings.unpacked > budget:
        raise _LimitPassed("unpacked")


def _note_entry(findings: ArchiveFindings, name: str, head: bytes) -> None:
    if sniff(head) in EXECUTABLE_TYPES and len(findings.executables) < EXECUTABLES_LISTED:
        findings.executables.append(name)


def _inspect_zip(
    stream: BinaryIO, findings: ArchiveFindings, limits: ArchiveLimits, budget: int
) -> None:
    with zipfile.ZipFile(stream) as archive:
        infos = archive.infolist()
        # The central directory states every entry's size: a bomb is caught before unpacking.
        findings.entries = len(infos)
        findings.unpacked = sum(info.file_size for info in infos)
        _count(findings, limits, budget, entry=0)
        for info in infos:
            if info.is_dir():
                continue
            with archive.open(info) as member:
                _note_entry(findings, info.filename, member.read(HEAD_BYTES))


def _inspect_tar(
    stream: BinaryIO, findings: ArchiveFindings, limits: ArchiveLimits, budget: int, *, mode: str
) -> None:
    with tarfile.open(fileobj=stream, mode=mode) as archive:  # type: ignore[call-overload]
        for member in archive:
            findings.unpacked += member.size
            _count(findings, limits, budget, entry=1)
            if member.isfile():
                extracted = archive.extractfile(member)
                if extracted is not None:
                    _note_entry(findings, member.name, extracted.read(HEAD_BYTES))


_OPENERS: dict[str, Callable[[BinaryIO], BinaryIO]] = {
    "gzip": lambda stream: gzip.GzipFile(fileobj=stream, mode="rb"),
    "bzip2": lambda stream: bz2.BZ2File(stream, mode="rb"),
    "xz": lambda stream: lzma.LZMAFile(stream, mode="rb"),  # noqa: SIM115 - the caller closes it
}


def _inspect_compressed(
    kind: str, stream: BinaryIO, findings: ArchiveFindings, limits: ArchiveLimits, budget: int
) -> None:
    """A compressed file: a compressed tar is inspected as a tar; anything else is one entry
    whose unpacked size is counted by unpacking it in chunks up to the budget."""
    with _OPENERS[kind](stream) as unpacked:
        head = unpacked.read(HEAD_BYTES)
    stream.seek(0)
    if sniff(head) == "tar":
        with _OPENERS[kind](stream) as unpacked:
            _inspect_tar(unpacked, findings, limits, budget, mode="r|")
        return
    _note_entry(findings, "(compressed content)", head)
    findings.entries = 1
    with _OPENERS[kind](stream) as unpacked:
        while chunk := unpacked.read(_CHUNK):
            findings.unpacked += len(chunk)
            _count(findings, limits, budget, entry=0)


def archive_reasons(
    findings: ArchiveFindings, *, packed_size: int, limits: ArchiveLimits, policy: CategoryPolicy
) -> list[Reason]:
    reasons: list[Reason] = []
    if findings.entries > limits.max_entries:
        reasons.append(
            Reason(
                "archive-too-many-entries",
                BLOCK,
                f"the archive has more than {limits.max_entries:,} entries",
            )
        )
    ratio = findings.unpacked / max(packed_size, 1)
    if findings.unpacked > limits.max_unpacked_bytes:
        reasons.append(
            Reason(
                "archive-too-large-unpacked",
                BLOCK,
                f"the archive unpacks to more than {limits.max_unpacked_bytes:,} bytes",
            )
        )
    elif ratio > limits.max_ratio:
        reasons.append(
            Reason(
                "archive-bomb",
                BLOCK,
                f"the archive unpacks to more than {limits.max_ratio} times its size "
                f"({findings.unpacked:,} bytes from {packed_size:,})",
            )
        )
    if findings.executables and not policy.allows_executables:
        reasons.append(
            Reason(
                "executable-in-archive",
                FLAG,
                "the archive holds executables (ELF, PE or Mach-O), which this category does "
                "not sell: " + ", ".join(findings.executables),
            )
        )
    return reasons


def archive_unreadable(kind: str, error: Exception) -> Reason:
    return Reason("archive-unreadable", BLOCK, f"the {kind} archive cannot be read: {error}")


ARCHIVE_ERRORS = (
    zipfile.BadZipFile,
    tarfile.TarError,
    EOFError,
    OSError,
    lzma.LZMAError,
    ValueError,
    NotImplementedError,  # a zip compression method Python cannot unpack
    io.UnsupportedOperation,
)


# --- Text --------------------------------------------------------------------------------------

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# A run of digits with the separators phone numbers are written with; 9 to 15 digits (E.164).
_PHONE = re.compile(r"(?<![\w.+])\+?\(?\d[\d\s().-]{7,}\d(?![\w.])")


def text_reasons(texts: Mapping[str, str]) -> list[Reason]:
    """Personal data in a listing's or a manifest's text: e-mail addresses and phone numbers,
    flagged for a human to judge (a support address may be meant)."""
    reasons: list[Reason] = []
    for name, text in texts.items():
        if _EMAIL.search(text):
            reasons.append(
                Reason("personal-data-email", FLAG, f"the {name} contains an e-mail address")
            )
        for match in _PHONE.finditer(text):
            digits = sum(char.isdigit() for char in match.group())
            if 9 <= digits <= 15:
                reasons.append(
                    Reason("personal-data-phone", FLAG, f"the {name} contains a phone number")
                )
                break
    return reasons
