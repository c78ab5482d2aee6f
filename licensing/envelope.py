"""The delivery package format: an artifact encrypted in chunks with AES-256-GCM.

Both directions stream: memory is bounded by the chunk size whatever the artifact's size, and
both SHA-256 hashes (of the artifact and of the package) are computed on the way, in one pass.
This module needs only the standard library and ``cryptography`` (buyers run it through
``python -m licensing.decrypt`` without the platform installed).

Format, version 1 (all integers big-endian)::

    offset  size  field
    0       5     magic, the ASCII bytes "MKPKG" (4D 4B 50 4B 47)
    5       1     format version, 0x01
    6       4     chunk size C: plaintext bytes per chunk, 1 .. 64 MiB (uint32)
    10      7     nonce prefix: random per package (or derived, see derived_nonce_prefix)
    17      2     context length N (uint16)
    19      N     context: public bytes the package is bound to (delivery id, key id ...)
    19+N    ...   chunks 0, 1, ..., L (at least one)

    chunk i = AES-256-GCM(data key, nonce_i, plaintext_i, aad = header) = ciphertext || tag(16)
    nonce_i = nonce prefix (7) || i as uint32 (4) || 0x01 if i == L else 0x00 (1)
    header  = bytes 0 .. 19+N, exactly as stored

Every chunk but the last holds exactly C plaintext bytes (C + 16 bytes stored); the last holds
0 .. C bytes (an empty artifact is one empty final chunk: 16 bytes). An artifact of S bytes has
max(1, ceil(S / C)) chunks; the package is 19 + N + S + 16 * chunks bytes. This is the STREAM
construction (Hoang, Reyhanitabar, Rogaway, Vizár 2015), as in Tink's streaming AEAD and age:

- the chunk index in the nonce makes reordering or duplicating chunks fail authentication;
- the final flag in the nonce makes dropping final chunks fail (the new last chunk was sealed as
  not final), and so does appending data after the final chunk (it was sealed as final);
- the header as associated data of every chunk makes any change to the header (chunk size,
  nonce prefix, context) fail, even for a package whose first chunk is left untouched;
- a reader finds chunk boundaries from C alone: a chunk is the last one when the package ends
  within C + 16 bytes after its start.

A data key must seal a single artifact (the platform makes a fresh key per delivery); the random
nonce prefix is a second line of defence should a key ever be reused. A caller that needs
packaging to be repeatable byte for byte (a retried job) may derive the prefix from the key and
context instead (:func:`derived_nonce_prefix`), under the precondition stated there. Chunk
indexes are 32 bits, so a package holds at most 2**32 chunks (4 PiB at 1 MiB chunks).

The context is stored in clear and authenticated, not secret. A reader may demand a given
context (``decrypt_stream(context=...)``), which refuses a package made for something else.

Failures raise :class:`PackageError` with a ``reason`` code. Decryption writes a chunk's
plaintext only after that chunk has authenticated, but whether the package is complete is known
only at its end: the output is valid only when :func:`decrypt_stream` returns; after a
:class:`PackageError` the caller must discard what was written (``licensing.decrypt`` writes to a
temporary file and renames it only on success).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from dataclasses import dataclass
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"MKPKG"
VERSION = 1
KEY_SIZE = 32
TAG_SIZE = 16
NONCE_PREFIX_SIZE = 7
MIN_CHUNK_SIZE = 1
# A reader allocates a chunk's worth of memory, so it refuses headers above this bound rather than
# let a crafted package make it allocate gigabytes.
MAX_CHUNK_SIZE = 64 * 1024 * 1024
MAX_CONTEXT_SIZE = 0xFFFF
MAX_CHUNKS = 2**32
# 1 MiB measured best here (AES-GCM alone is slower at 4 MiB, past the caches; see bench/README).
DEFAULT_CHUNK_SIZE = 1024 * 1024
# Both directions hand their output to ``dst.write`` in pieces of at most this size, whatever the
# chunk size (the bytes are the same). Linux gives a buffered write page-cache folios of about its
# own size (ext4 with large folios, kernel 6.x): a 1 MiB write gets one order-8 folio, a 128 KiB
# write an order-5 one, and on this platform's VMs folios of order 7 and up cost two to three
# times the system time: a 1 GiB package took 2.7 CPU s written by chunk, 1.7 in 128 KiB pieces
# (median of five; bench/README). The 7,000 more calls per GiB cost a few milliseconds.
WRITE_SIZE = 128 * 1024

_FIXED = struct.Struct(">5sBI7sH")
FIXED_HEADER_SIZE = _FIXED.size  # 19
_INDEX = struct.Struct(">I")
_NOT_LAST = b"\x00"
_LAST = b"\x01"
_PREFIX_LABEL = b"marketplace package nonce prefix v1\x00"


class PackageError(Exception):
    """The package cannot be read or failed authentication.

    ``reason`` is one of: ``not_a_package``, ``unsupported_version``, ``bad_header``,
    ``context_mismatch``, ``truncated``, ``trailing_data``, ``authentication_failed``.
    ``chunk`` is the index of the chunk concerned, when there is one.
    """

    def __init__(self, reason: str, message: str, *, chunk: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.chunk = chunk


@dataclass(frozen=True)
class PackageHeader:
    version: int
    chunk_size: int
    nonce_prefix: bytes
    context: bytes
    raw: bytes

    @property
    def size(self) -> int:
        return len(self.raw)


@dataclass(frozen=True)
class PackageInfo:
    """What :func:`encrypt_stream` wrote; hashes are lowercase hex."""

    plaintext_sha256: str
    package_sha256: str
    size: int
    package_size: int
    chunks: int
    chunk_size: int


@dataclass(frozen=True)
class DecryptInfo:
    """What :func:`decrypt_stream` read; valid only because it returned."""

    plaintext_sha256: str
    package_sha256: str
    size: int
    package_size: int
    chunks: int
    context: bytes


def generate_data_key() -> bytes:
    return os.urandom(KEY_SIZE)


def chunk_count(size: int, chunk_size: int) -> int:
    return max(1, -(-size // chunk_size))


def package_size(size: int, *, chunk_size: int = DEFAULT_CHUNK_SIZE, context: bytes = b"") -> int:
    """The exact size of the package of an artifact of ``size`` bytes."""
    return FIXED_HEADER_SIZE + len(context) + size + TAG_SIZE * chunk_count(size, chunk_size)


def derived_nonce_prefix(data_key: bytes, context: bytes) -> bytes:
    """A nonce prefix derived from the key and context, for packaging that must be repeatable.

    With it, encrypting the same artifact again under the same key and context writes the very
    same package, so a retried packaging job cannot leave two different packages of one
    delivery. Precondition: the key only ever encrypts that one artifact. The same key, prefix
    and nonces over different bytes would reuse GCM nonces, which gives away the XOR of the two
    plaintexts and lets anyone forge chunks; so a caller must check the artifact's hash
    (``PackageInfo.plaintext_sha256``) before it publishes a package made this way, and must use
    a fresh key for a new artifact.
    """
    mac = hmac.new(bytes(data_key), _PREFIX_LABEL + bytes(context), hashlib.sha256)
    return mac.digest()[:NONCE_PREFIX_SIZE]


def _check_key(data_key: bytes) -> AESGCM:
    if len(data_key) != KEY_SIZE:
        raise ValueError(f"the data key must be {KEY_SIZE} bytes, not {len(data_key)}")
    return AESGCM(bytes(data_key))


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return prefix + _INDEX.pack(index) + (_LAST if last else _NOT_LAST)


def _fill(src: BinaryIO, view: memoryview) -> int:
    """Read into ``view`` until it is full or the stream ends; the number of bytes read."""
    readinto = getattr(src, "readinto", None)
    total, wanted = 0, len(view)
    while total < wanted:
        if readinto is not None:
            got = readinto(view[total:])
        else:
            data = src.read(wanted - total)
            got = len(data) if data is not None else None
            if got:
                view[total : total + got] = data
        if got is None:
            # A non-blocking stream with nothing ready: we cannot tell a pause from the end.
            raise OSError("the source stream is non-blocking; give a blocking stream")
        if got == 0:
            break
        total += got
    return total


def _write_all(dst: BinaryIO, data: memoryview) -> None:
    """Write ``data`` in pieces of at most WRITE_SIZE bytes (the bytes are the same)."""
    for start in range(0, len(data), WRITE_SIZE):
        piece = data[start : start + WRITE_SIZE]
        # Buffered files write everything at once; raw streams may write part of it.
        while len(piece):
            written = dst.write(piece)
            if written is None or written >= len(piece):
                break
            piece = piece[written:]


def encode_header(*, chunk_size: int, nonce_prefix: bytes, context: bytes) -> bytes:
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(
            f"chunk_size must be {MIN_CHUNK_SIZE} .. {MAX_CHUNK_SIZE}, not {chunk_size}"
        )
    if len(context) > MAX_CONTEXT_SIZE:
        raise ValueError(f"context must be at most {MAX_CONTEXT_SIZE} bytes")
    if len(nonce_prefix) != NONCE_PREFIX_SIZE:
        raise ValueError(f"nonce_prefix must be {NONCE_PREFIX_SIZE} bytes")
    fixed = _FIXED.pack(MAGIC, VERSION, chunk_size, nonce_prefix, len(context))
    return fixed + bytes(context)


def read_header(src: BinaryIO) -> PackageHeader:
    """Read and check the header; ``src`` is left at the first chunk."""
    fixed = bytearray(FIXED_HEADER_SIZE)
    got = _fill(src, memoryview(fixed))
    if got < len(MAGIC) or fixed[: len(MAGIC)] != MAGIC:
        raise PackageError("not_a_package", "not a delivery package (no MKPKG magic)")
    if got > len(MAGIC) and fixed[len(MAGIC)] != VERSION:
        raise PackageError(
            "unsupported_version",
            f"package format version {fixed[len(MAGIC)]} is not supported (this reader: {VERSION})",
        )
    if got < FIXED_HEADER_SIZE:
        raise PackageError("truncated", "the package ends inside its header")
    _magic, version, chunk_size, prefix, context_size = _FIXED.unpack(fixed)
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise PackageError("bad_header", f"the header's chunk size {chunk_size} is out of range")
    context = bytearray(context_size)
    if _fill(src, memoryview(context)) < context_size:
        raise PackageError("truncated", "the package ends inside its header")
    return PackageHeader(
        version=version,
        chunk_size=chunk_size,
        nonce_prefix=prefix,
        context=bytes(context),
        raw=bytes(fixed) + bytes(context),
    )


def encrypt_stream(
    src: BinaryIO,
    dst: BinaryIO,
    *,
    data_key: bytes,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    context: bytes = b"",
    nonce_prefix: bytes | None = None,
) -> PackageInfo:
    """Encrypt ``src`` to ``dst`` as a package; reads ``src`` to its end, once.

    ``nonce_prefix`` is random unless given (see :func:`derived_nonce_prefix` for the one case
    where it should be). ``dst.write`` must be done with the bytes it is given when it returns
    (every ``io`` object is): the buffers are reused from one chunk to the next.
    """
    aead = _check_key(data_key)
    prefix = os.urandom(NONCE_PREFIX_SIZE) if nonce_prefix is None else bytes(nonce_prefix)
    header = encode_header(chunk_size=chunk_size, nonce_prefix=prefix, context=context)
    plain_hash, package_hash = hashlib.sha256(), hashlib.sha256()
    _write_all(dst, memoryview(header))
    package_hash.update(header)
    # One byte more than a chunk: whether it fills tells whether the chunk is the last one,
    # without a second buffer.
    inbuf = bytearray(chunk_size + 1)
    inview = memoryview(inbuf)
    outview = memoryview(bytearray(chunk_size + TAG_SIZE))
    encrypt_into = getattr(
        aead, "encrypt_into", None
    )  # newer cryptography: no allocation per chunk
    have = _fill(src, inview)
    index, size, written = 0, 0, len(header)
    while True:
        last = have <= chunk_size
        count = have if last else chunk_size
        plain = inview[:count]
        nonce = _nonce(prefix, index, last)
        if encrypt_into is not None:
            sealed = outview[: count + TAG_SIZE]
            encrypt_into(nonce, plain, header, sealed)
        else:
            sealed = memoryview(aead.encrypt(nonce, plain, header))
        plain_hash.update(plain)
        package_hash.update(sealed)
        _write_all(dst, sealed)
        size += count
        written += len(sealed)
        if last:
            break
        index += 1
        if index >= MAX_CHUNKS:
            raise ValueError("the artifact is too large for this chunk size (2**32 chunks)")
        inbuf[0] = inbuf[chunk_size]
        have = 1 + _fill(src, inview[1:])
    return PackageInfo(
        plaintext_sha256=plain_hash.hexdigest(),
        package_sha256=package_hash.hexdigest(),
        size=size,
        package_size=written,
        chunks=index + 1,
        chunk_size=chunk_size,
    )


def decrypt_stream(
    src: BinaryIO,
    dst: BinaryIO,
    *,
    data_key: bytes,
    context: bytes | None = None,
) -> DecryptInfo:
    """Decrypt a package from ``src`` to ``dst``, checking every chunk before writing it.

    With ``context`` given, a package bound to any other context is refused; with None, the
    (authenticated) context of the header is accepted and returned in the result. Raises
    :class:`PackageError`; after one, what was written to ``dst`` must be discarded.
    """
    aead = _check_key(data_key)
    header = read_header(src)
    if context is not None and bytes(context) != header.context:
        raise PackageError(
            "context_mismatch", "the package was made for another context (delivery or key)"
        )
    package_hash = hashlib.sha256(header.raw)
    plain_hash = hashlib.sha256()
    aad, prefix = header.raw, header.nonce_prefix
    stored = header.chunk_size + TAG_SIZE
    inbuf = bytearray(stored + 1)
    inview = memoryview(inbuf)
    outview = memoryview(bytearray(header.chunk_size))
    decrypt_into = getattr(
        aead, "decrypt_into", None
    )  # newer cryptography: no allocation per chunk
    have = _fill(src, inview)
    index, size, read = 0, 0, header.size
    while True:
        last = have <= stored
        count = have if last else stored
        if count < TAG_SIZE:
            if index == 0:
                raise PackageError("truncated", "the package ends before its first chunk", chunk=0)
            raise PackageError("truncated", f"the package ends inside chunk {index}", chunk=index)
        sealed = inview[:count]
        try:
            if decrypt_into is not None:
                plain = outview[: count - TAG_SIZE]
                decrypt_into(_nonce(prefix, index, last), sealed, aad, plain)
            else:
                plain = memoryview(aead.decrypt(_nonce(prefix, index, last), sealed, aad))
        except InvalidTag:
            raise _diagnose(aead, prefix, aad, sealed, index, last) from None
        package_hash.update(sealed)
        plain_hash.update(plain)
        _write_all(dst, plain)
        size += len(plain)
        read += count
        if last:
            break
        index += 1
        if index >= MAX_CHUNKS:
            raise PackageError("bad_header", "the package has more than 2**32 chunks", chunk=index)
        inbuf[0] = inbuf[stored]
        have = 1 + _fill(src, inview[1:])
    return DecryptInfo(
        plaintext_sha256=plain_hash.hexdigest(),
        package_sha256=package_hash.hexdigest(),
        size=size,
        package_size=read,
        chunks=index + 1,
        context=header.context,
    )


def _opens(aead: AESGCM, nonce: bytes, sealed: memoryview, aad: bytes) -> bool:
    try:
        aead.decrypt(nonce, sealed, aad)
    except InvalidTag:
        return False
    return True


def _diagnose(
    aead: AESGCM, prefix: bytes, aad: bytes, sealed: memoryview, index: int, last: bool
) -> PackageError:
    """Name the failure of a chunk; only on the failure path, so the extra attempt costs nothing."""
    if _opens(aead, _nonce(prefix, index, not last), sealed, aad):
        if last:
            return PackageError(
                "truncated",
                f"the package is truncated: it ends after chunk {index}, which is not the final "
                "one",
                chunk=index,
            )
        return PackageError(
            "trailing_data", f"data follows the final chunk ({index}) of the package", chunk=index
        )
    if index == 0:
        return PackageError(
            "authentication_failed",
            "chunk 0 failed authentication: wrong key, or the package was altered",
            chunk=0,
        )
    return PackageError(
        "authentication_failed",
        f"chunk {index} failed authentication: the package was altered, cut, or its chunks "
        "reordered",
        chunk=index,
    )
