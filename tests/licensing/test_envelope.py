"""The chunked AES-256-GCM package format (licensing/envelope.py)."""

from __future__ import annotations

import hashlib
import io
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import aead as aead_module
from hypothesis import given, settings
from hypothesis import strategies as st

from licensing import envelope
from licensing.envelope import (
    DEFAULT_CHUNK_SIZE,
    FIXED_HEADER_SIZE,
    MAX_CHUNK_SIZE,
    TAG_SIZE,
    PackageError,
    decrypt_stream,
    encrypt_stream,
    generate_data_key,
    package_size,
    read_header,
)

REPO = Path(__file__).resolve().parents[2]
KEY = bytes(range(32))
CHUNK = 16
CONTEXT = b"delivery 0f6f1c"


def seal(data: bytes, *, chunk_size: int = CHUNK, context: bytes = CONTEXT, key: bytes = KEY):
    out = io.BytesIO()
    info = encrypt_stream(
        io.BytesIO(data), out, data_key=key, chunk_size=chunk_size, context=context
    )
    return out.getvalue(), info


def unseal(package: bytes, *, key: bytes = KEY, context: bytes | None = CONTEXT):
    out = io.BytesIO()
    info = decrypt_stream(io.BytesIO(package), out, data_key=key, context=context)
    return out.getvalue(), info


def failure(package: bytes, **kwargs) -> PackageError:
    with pytest.raises(PackageError) as caught:
        unseal(package, **kwargs)
    return caught.value


def chunks_of(package: bytes, chunk_size: int = CHUNK, context: bytes = CONTEXT) -> list[bytes]:
    body = package[FIXED_HEADER_SIZE + len(context) :]
    stored = chunk_size + TAG_SIZE
    return [body[i : i + stored] for i in range(0, len(body), stored)]


def header_of(package: bytes, context: bytes = CONTEXT) -> bytes:
    return package[: FIXED_HEADER_SIZE + len(context)]


# --- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "chunks"),
    [(0, 1), (1, 1), (CHUNK - 1, 1), (CHUNK, 1), (CHUNK + 1, 2), (5 * CHUNK + 3, 6)],
)
def test_round_trip_at_every_chunk_boundary(size: int, chunks: int) -> None:
    data = os.urandom(size)
    package, info = seal(data)

    assert info.size == size
    assert info.chunks == chunks
    assert info.chunk_size == CHUNK
    assert info.plaintext_sha256 == hashlib.sha256(data).hexdigest()
    assert info.package_sha256 == hashlib.sha256(package).hexdigest()
    assert (
        info.package_size == len(package) == package_size(size, chunk_size=CHUNK, context=CONTEXT)
    )
    assert len(package) == FIXED_HEADER_SIZE + len(CONTEXT) + size + TAG_SIZE * chunks

    plain, read = unseal(package)
    assert plain == data
    assert read.plaintext_sha256 == info.plaintext_sha256
    assert read.package_sha256 == info.package_sha256
    assert (read.size, read.package_size, read.chunks) == (size, len(package), chunks)
    assert read.context == CONTEXT


@pytest.mark.parametrize(
    "size", [0, DEFAULT_CHUNK_SIZE - 1, DEFAULT_CHUNK_SIZE, DEFAULT_CHUNK_SIZE + 1]
)
def test_round_trip_with_the_default_chunk_size(size: int) -> None:
    data = os.urandom(size)
    out = io.BytesIO()
    info = encrypt_stream(io.BytesIO(data), out, data_key=KEY)
    assert info.chunk_size == DEFAULT_CHUNK_SIZE == 1024 * 1024
    assert info.chunks == max(1, -(-size // DEFAULT_CHUNK_SIZE))
    plain, read = unseal(out.getvalue(), context=b"")
    assert plain == data
    assert read.package_sha256 == info.package_sha256


@settings(max_examples=200, deadline=None)
@given(
    data=st.binary(max_size=600),
    chunk_size=st.integers(min_value=1, max_value=200),
    context=st.binary(max_size=40),
)
def test_round_trip_of_any_size_and_chunk_size(
    data: bytes, chunk_size: int, context: bytes
) -> None:
    package, info = seal(data, chunk_size=chunk_size, context=context)
    assert (
        info.package_size
        == len(package)
        == package_size(len(data), chunk_size=chunk_size, context=context)
    )
    plain, read = unseal(package, context=context)
    assert plain == data
    assert read.plaintext_sha256 == hashlib.sha256(data).hexdigest()
    # Dropping the last stored byte always fails, whatever the layout.
    with pytest.raises(PackageError):
        unseal(package[:-1], context=context)


def test_the_empty_artifact_is_one_empty_final_chunk() -> None:
    package, info = seal(b"")
    header = read_header(io.BytesIO(package))
    assert len(package) == header.size + TAG_SIZE
    assert (info.size, info.chunks) == (0, 1)
    assert info.plaintext_sha256 == hashlib.sha256(b"").hexdigest()
    assert unseal(package)[0] == b""


def test_the_header_is_laid_out_as_documented() -> None:
    package, _ = seal(b"x" * 40)
    magic, version, chunk_size, prefix, context_size = struct.unpack(">5sBI7sH", package[:19])
    assert (magic, version, chunk_size, context_size) == (b"MKPKG", 1, CHUNK, len(CONTEXT))
    assert package[19 : 19 + len(CONTEXT)] == CONTEXT
    header = read_header(io.BytesIO(package))
    assert header.nonce_prefix == prefix
    assert header.raw == package[: 19 + len(CONTEXT)]


def test_chunks_are_aes_gcm_under_the_documented_nonces_and_aad() -> None:
    data = os.urandom(2 * CHUNK + 5)
    package, _ = seal(data)
    header = header_of(package)
    prefix = header[10:17]
    gcm = aead_module.AESGCM(KEY)
    opened = b""
    for index, chunk in enumerate(chunks_of(package)):
        final = b"\x01" if index == 2 else b"\x00"
        opened += gcm.decrypt(prefix + struct.pack(">I", index) + final, chunk, header)
    assert opened == data


def test_each_package_gets_a_fresh_nonce_prefix() -> None:
    first, _ = seal(b"same bytes")
    second, _ = seal(b"same bytes")
    assert first[10:17] != second[10:17]
    assert first[19 + len(CONTEXT) :] != second[19 + len(CONTEXT) :]


def test_streams_without_readinto_and_with_short_reads_and_writes() -> None:
    class Trickle:
        """A reader that only has read(), handing out at most 5 bytes at a time."""

        def __init__(self, data: bytes) -> None:
            self.data = io.BytesIO(data)

        def read(self, size: int = -1) -> bytes:
            return self.data.read(min(size, 5))

    class ShortWriter(io.RawIOBase):
        """A raw stream that accepts at most 7 bytes per write, as raw streams may."""

        def __init__(self) -> None:
            self.buffer = bytearray()

        def writable(self) -> bool:
            return True

        def write(self, data) -> int:
            taken = bytes(data[:7])
            self.buffer += taken
            return len(taken)

    data = os.urandom(3 * CHUNK + 2)
    sink = ShortWriter()
    info = encrypt_stream(Trickle(data), sink, data_key=KEY, chunk_size=CHUNK, context=CONTEXT)
    assert info.package_size == len(sink.buffer)
    plain = ShortWriter()
    decrypt_stream(Trickle(bytes(sink.buffer)), plain, data_key=KEY, context=CONTEXT)
    assert bytes(plain.buffer) == data


def test_without_encrypt_into_and_decrypt_into_as_in_older_cryptography(monkeypatch) -> None:
    real = aead_module.AESGCM

    class OlderAESGCM:
        def __init__(self, key: bytes) -> None:
            self._gcm = real(key)

        def encrypt(self, nonce, data, aad):
            return self._gcm.encrypt(nonce, data, aad)

        def decrypt(self, nonce, data, aad):
            return self._gcm.decrypt(nonce, data, aad)

    data = os.urandom(4 * CHUNK + 9)
    modern, _ = seal(data)
    monkeypatch.setattr(envelope, "AESGCM", OlderAESGCM)
    older, info = seal(data)
    assert unseal(older)[0] == data
    assert unseal(modern)[0] == data
    assert info.package_size == len(older)
    assert failure(older[:-1]).reason == "authentication_failed"


def test_bad_arguments_to_encrypt_are_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        seal(b"x", key=bytes(16))
    with pytest.raises(ValueError, match="chunk_size"):
        seal(b"x", chunk_size=0)
    with pytest.raises(ValueError, match="chunk_size"):
        seal(b"x", chunk_size=MAX_CHUNK_SIZE + 1)
    with pytest.raises(ValueError, match="context"):
        seal(b"x", context=bytes(0x10000))
    with pytest.raises(ValueError, match="32 bytes"):
        unseal(seal(b"x")[0], key=bytes(31))
    assert len(generate_data_key()) == 32
    assert generate_data_key() != generate_data_key()


# --- tampering -----------------------------------------------------------------------------------

ARTIFACT = bytes(range(256))[: 3 * CHUNK + 8]  # chunks 0..2 full, chunk 3 final with 8 bytes


def test_every_flipped_bit_anywhere_fails() -> None:
    package, _ = seal(ARTIFACT)
    reasons = set()
    for position in range(len(package)):
        for bit in (0x01, 0x80):
            tampered = bytearray(package)
            tampered[position] ^= bit
            reasons.add(failure(bytes(tampered)).reason)
    assert reasons <= {
        "not_a_package",
        "unsupported_version",
        "bad_header",
        "truncated",
        "authentication_failed",
        "context_mismatch",
    }


def test_a_flipped_byte_in_a_later_chunk_names_that_chunk() -> None:
    package, _ = seal(ARTIFACT)
    tampered = bytearray(package)
    tampered[len(header_of(package)) + 2 * (CHUNK + TAG_SIZE) + 3] ^= 0x20
    error = failure(bytes(tampered))
    assert (error.reason, error.chunk) == ("authentication_failed", 2)
    assert "chunk 2 failed authentication" in str(error)


def test_a_changed_header_fails_even_with_the_chunks_untouched() -> None:
    package, _ = seal(ARTIFACT)
    other = bytearray(package)
    other[19] ^= 0x01  # first byte of the context, read without a demanded context
    error = failure(bytes(other), context=None)
    assert (error.reason, error.chunk) == ("authentication_failed", 0)
    prefix = bytearray(package)
    prefix[12] ^= 0x01  # inside the nonce prefix
    assert failure(bytes(prefix)).reason == "authentication_failed"


def test_a_package_cut_at_any_length_fails() -> None:
    package, _ = seal(ARTIFACT)
    for kept in range(len(package)):
        failure(package[:kept])


def test_dropping_the_final_chunk_is_reported_as_truncation() -> None:
    package, _ = seal(ARTIFACT)
    without_final = b"".join([header_of(package), *chunks_of(package)[:3]])
    error = failure(without_final)
    assert (error.reason, error.chunk) == ("truncated", 2)
    assert "truncated" in str(error)


def test_dropping_chunks_of_a_package_of_full_chunks_fails() -> None:
    package, _ = seal(os.urandom(4 * CHUNK))
    assert len(chunks_of(package)) == 4
    for keep in range(4):
        cut = b"".join([header_of(package), *chunks_of(package)[:keep]])
        error = failure(cut)
        assert error.reason == "truncated"


def test_a_cut_inside_the_header_or_before_the_first_chunk_is_truncation() -> None:
    package, _ = seal(ARTIFACT)
    assert failure(package[:10]).reason == "truncated"
    assert failure(package[:21]).reason == "truncated"
    error = failure(header_of(package) + package[len(header_of(package)) :][:15])
    assert error.reason == "truncated"


@pytest.mark.parametrize("order", [(1, 0, 2, 3), (0, 2, 1, 3), (0, 1, 3, 2), (3, 1, 2, 0)])
def test_reordered_chunks_fail(order: tuple[int, ...]) -> None:
    package, _ = seal(ARTIFACT)
    chunks = chunks_of(package)
    swapped = b"".join([header_of(package), *(chunks[i] for i in order)])
    first_moved = next(position for position, index in enumerate(order) if position != index)
    error = failure(swapped)
    assert error.reason in {"authentication_failed", "truncated"}
    assert error.chunk == first_moved


def test_a_duplicated_chunk_fails() -> None:
    package, _ = seal(ARTIFACT)
    chunks = chunks_of(package)
    doubled = b"".join([header_of(package), chunks[0], chunks[1], chunks[1], chunks[2], chunks[3]])
    error = failure(doubled)
    assert (error.reason, error.chunk) == ("authentication_failed", 2)


def test_data_appended_after_a_full_final_chunk_is_reported() -> None:
    package, _ = seal(os.urandom(2 * CHUNK))
    for extra in (b"\x00", os.urandom(CHUNK + TAG_SIZE), chunks_of(package)[-1]):
        error = failure(package + extra)
        assert (error.reason, error.chunk) == ("trailing_data", 1)


def test_data_appended_after_a_short_final_chunk_fails() -> None:
    package, _ = seal(ARTIFACT)
    for extra in (b"\x00", os.urandom(100), chunks_of(package)[-1]):
        error = failure(package + extra)
        assert error.reason == "authentication_failed"


def test_a_chunk_from_another_package_under_the_same_key_fails() -> None:
    first, _ = seal(ARTIFACT)
    second, _ = seal(ARTIFACT)
    spliced = b"".join([header_of(first), chunks_of(first)[0], *chunks_of(second)[1:]])
    error = failure(spliced)
    assert (error.reason, error.chunk) == ("authentication_failed", 1)


def test_the_wrong_key_fails_at_the_first_chunk() -> None:
    package, _ = seal(ARTIFACT)
    error = failure(package, key=bytes(32))
    assert (error.reason, error.chunk) == ("authentication_failed", 0)
    assert "wrong key" in str(error)


def test_the_wrong_context_fails() -> None:
    package, _ = seal(ARTIFACT)
    error = failure(package, context=b"delivery 999999")
    assert error.reason == "context_mismatch"
    assert failure(package, context=b"").reason == "context_mismatch"
    # Without a demanded context, the stored one is accepted and reported.
    assert unseal(package, context=None)[1].context == CONTEXT


def test_output_holds_only_authenticated_chunks_when_decryption_fails() -> None:
    package, _ = seal(ARTIFACT)
    tampered = bytearray(package)
    tampered[len(header_of(package)) + 2 * (CHUNK + TAG_SIZE)] ^= 0x01  # chunk 2
    out = io.BytesIO()
    with pytest.raises(PackageError):
        decrypt_stream(io.BytesIO(bytes(tampered)), out, data_key=KEY, context=CONTEXT)
    assert out.getvalue() == ARTIFACT[: 2 * CHUNK]


def test_headers_that_are_not_ours_or_out_of_range_are_refused() -> None:
    package, _ = seal(ARTIFACT)
    assert failure(b"").reason == "not_a_package"
    assert failure(b"PK\x03\x04" + package[4:]).reason == "not_a_package"
    assert failure(b"MKPKG").reason == "truncated"
    version = failure(package[:5] + b"\x02" + package[6:])
    assert version.reason == "unsupported_version"
    assert "version 2" in str(version)
    for chunk_size in (0, MAX_CHUNK_SIZE + 1, 2**32 - 1):
        forged = package[:6] + struct.pack(">I", chunk_size) + package[10:]
        assert failure(forged).reason == "bad_header"


# --- memory --------------------------------------------------------------------------------------

BOUNDED = textwrap.dedent(
    """
    import hashlib, io, os, sys, threading
    from licensing.envelope import decrypt_stream, encrypt_stream

    TOTAL = int(sys.argv[1])
    block = os.urandom(1 << 20)

    class Generated(io.RawIOBase):
        # TOTAL bytes made on the fly: nothing holds more than one block of the artifact.
        def __init__(self):
            self.left = TOTAL
        def readable(self):
            return True
        def readinto(self, view):
            n = min(len(view), self.left, len(block))
            view[:n] = block[:n]
            self.left -= n
            return n

    class Hashing(io.RawIOBase):
        def __init__(self):
            self.digest = hashlib.sha256()
        def writable(self):
            return True
        def write(self, data):
            self.digest.update(data)
            return len(data)

    key = os.urandom(32)
    read_end, write_end = os.pipe()
    result = {}

    def produce():
        with open(write_end, "wb") as pipe:
            result["sealed"] = encrypt_stream(Generated(), pipe, data_key=key, context=b"c")

    producer = threading.Thread(target=produce)
    producer.start()
    sink = Hashing()
    with open(read_end, "rb") as pipe:
        opened = decrypt_stream(pipe, sink, data_key=key, context=b"c")
    producer.join()
    sealed = result["sealed"]
    assert sealed.size == opened.size == TOTAL, (sealed, opened)
    assert sealed.plaintext_sha256 == opened.plaintext_sha256 == sink.digest.hexdigest()
    assert sealed.package_sha256 == opened.package_sha256
    # VmHWM, the peak of this process image: ru_maxrss would keep the peak of the forked
    # pytest process across exec.
    with open("/proc/self/status") as status:
        print(next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) // 1024)
    """
)


def test_memory_stays_bounded_for_a_256_mib_stream_both_ways() -> None:
    """Encrypt 256 MiB made on the fly into a pipe and decrypt it from the other end."""
    result = subprocess.run(
        [sys.executable, "-c", BOUNDED, str(256 * 1024 * 1024)],
        cwd=REPO,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    peak_mib = int(result.stdout.strip())
    assert peak_mib < 100, f"peak RSS {peak_mib} MiB"


# --- repeatable packaging ------------------------------------------------------------------------


def test_a_derived_nonce_prefix_makes_packaging_repeatable() -> None:
    data = os.urandom(3 * CHUNK + 1)
    prefix = envelope.derived_nonce_prefix(KEY, CONTEXT)
    assert len(prefix) == 7
    assert envelope.derived_nonce_prefix(KEY, b"other") != prefix
    assert envelope.derived_nonce_prefix(bytes(32), CONTEXT) != prefix

    def package() -> bytes:
        out = io.BytesIO()
        encrypt_stream(
            io.BytesIO(data), out, data_key=KEY, chunk_size=CHUNK, context=CONTEXT,
            nonce_prefix=prefix,
        )  # fmt: skip
        return out.getvalue()

    first, second = package(), package()
    assert first == second
    assert read_header(io.BytesIO(first)).nonce_prefix == prefix
    assert unseal(first)[0] == data


def test_a_given_nonce_prefix_must_be_7_bytes() -> None:
    with pytest.raises(ValueError, match="nonce_prefix"):
        encrypt_stream(io.BytesIO(b"x"), io.BytesIO(), data_key=KEY, nonce_prefix=bytes(8))
