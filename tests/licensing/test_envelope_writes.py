"""How licensing/envelope.py hands its output to the stream it writes: in pieces of at most
WRITE_SIZE bytes whatever the chunk size (large writes cost the kernel more; see the constant),
with the bytes of the documented format (docs/formats/package-v1.md) unchanged."""

from __future__ import annotations

import hashlib
import io
import os
import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from licensing.envelope import (
    DEFAULT_CHUNK_SIZE,
    WRITE_SIZE,
    decrypt_stream,
    encode_header,
    encrypt_stream,
)

KEY = bytes(range(32))
PREFIX = bytes.fromhex("0102030405060f")
CONTEXT = b"marketplace:delivery:writes"


class Recorder(io.RawIOBase):
    """A raw stream that keeps what it is given and the size of every write; with ``limit``
    it takes at most that many bytes per call, as a raw stream may."""

    def __init__(self, limit: int | None = None) -> None:
        self.buffer = bytearray()
        self.sizes: list[int] = []
        self.limit = limit

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        taken = bytes(data if self.limit is None else data[: self.limit])
        self.sizes.append(len(data))
        self.buffer += taken
        return len(taken)


def reference_package(data: bytes, chunk_size: int) -> bytes:
    """The package as docs/formats/package-v1.md defines it, built chunk by chunk."""
    header = encode_header(chunk_size=chunk_size, nonce_prefix=PREFIX, context=CONTEXT)
    pieces = [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)] or [b""]
    gcm, body = AESGCM(KEY), b""
    for index, piece in enumerate(pieces):
        final = b"\x01" if index == len(pieces) - 1 else b"\x00"
        body += gcm.encrypt(PREFIX + struct.pack(">I", index) + final, piece, header)
    return header + body


@pytest.mark.parametrize(
    "size",
    [0, WRITE_SIZE - 1, WRITE_SIZE + 1, DEFAULT_CHUNK_SIZE, 2 * DEFAULT_CHUNK_SIZE + 12345],
)
def test_encryption_writes_pieces_of_at_most_write_size_of_the_documented_bytes(
    size: int,
) -> None:
    data = os.urandom(size)
    sink = Recorder()
    info = encrypt_stream(
        io.BytesIO(data), sink, data_key=KEY, context=CONTEXT, nonce_prefix=PREFIX
    )

    assert max(sink.sizes) <= WRITE_SIZE
    expected = reference_package(data, DEFAULT_CHUNK_SIZE)
    assert bytes(sink.buffer) == expected
    assert info.package_sha256 == hashlib.sha256(expected).hexdigest()
    assert info.plaintext_sha256 == hashlib.sha256(data).hexdigest()
    assert info.package_size == len(expected)


def test_decryption_writes_pieces_of_at_most_write_size() -> None:
    data = os.urandom(2 * DEFAULT_CHUNK_SIZE + 777)
    sink = Recorder()
    info = decrypt_stream(
        io.BytesIO(reference_package(data, DEFAULT_CHUNK_SIZE)),
        sink,
        data_key=KEY,
        context=CONTEXT,
    )

    assert max(sink.sizes) <= WRITE_SIZE
    assert bytes(sink.buffer) == data
    assert info.plaintext_sha256 == hashlib.sha256(data).hexdigest()


def test_short_writes_inside_a_piece_lose_and_reorder_nothing() -> None:
    # 100,000 bytes per call: neither a divisor of WRITE_SIZE nor of the chunk.
    data = os.urandom(DEFAULT_CHUNK_SIZE + WRITE_SIZE + 5)
    sink = Recorder(limit=100_000)
    encrypt_stream(io.BytesIO(data), sink, data_key=KEY, context=CONTEXT, nonce_prefix=PREFIX)
    assert bytes(sink.buffer) == reference_package(data, DEFAULT_CHUNK_SIZE)
    assert max(sink.sizes) <= WRITE_SIZE

    plain = Recorder(limit=100_000)
    decrypt_stream(io.BytesIO(bytes(sink.buffer)), plain, data_key=KEY, context=CONTEXT)
    assert bytes(plain.buffer) == data


def test_chunks_larger_than_a_piece_and_smaller_ones_give_the_documented_bytes() -> None:
    data = os.urandom(3 * WRITE_SIZE + 99)
    for chunk_size in (1000, WRITE_SIZE - 16, WRITE_SIZE, WRITE_SIZE + 1, 4 * WRITE_SIZE):
        sink = Recorder()
        encrypt_stream(
            io.BytesIO(data),
            sink,
            data_key=KEY,
            chunk_size=chunk_size,
            context=CONTEXT,
            nonce_prefix=PREFIX,
        )
        assert bytes(sink.buffer) == reference_package(data, chunk_size), chunk_size
        assert max(sink.sizes) <= WRITE_SIZE
