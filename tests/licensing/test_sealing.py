"""Sealing data keys to a buyer's X25519 public key (licensing/sealing.py)."""

from __future__ import annotations

import base64
import os
import subprocess

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519

from licensing import sealing
from licensing.sealing import (
    SEALED_SIZE,
    InvalidKeyError,
    SealedKeyError,
    b64url_encode,
    delivery_info,
    load_private_key,
    load_public_key,
    open_sealed,
    open_sealed_text,
    seal,
    seal_text,
)

DATA_KEY = bytes(range(32))
INFO = delivery_info(b"delivery 42")

try:
    from cryptography.hazmat.primitives import hpke
except ImportError:  # pragma: no cover - cryptography < 47
    hpke = None

# Low-order points of Curve25519 and non-canonical encodings (libsodium's blocklist): every
# shared secret with them is zero, so a key sealed to one would be readable by anyone.
LOW_ORDER = [
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0100000000000000000000000000000000000000000000000000000000000000",
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
]
NON_CANONICAL = [
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # p
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # p + 1
    "cdeb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b880",  # high bit set
    "0900000000000000000000000000000000000000000000000000000000000080",  # 9 with high bit
]


@pytest.fixture
def identity() -> x25519.X25519PrivateKey:
    return x25519.X25519PrivateKey.generate()


def raw_public(key: x25519.X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def test_a_sealed_key_opens_with_the_identity_and_info(identity) -> None:
    sealed = seal(raw_public(identity), DATA_KEY, info=INFO)
    assert len(sealed) == SEALED_SIZE == 81
    assert sealed[0] == 1
    assert open_sealed(identity, sealed, info=INFO) == DATA_KEY

    text = seal_text(raw_public(identity), DATA_KEY, info=INFO)
    assert len(text) == 108
    assert set(text) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert open_sealed_text(identity, text, info=INFO) == DATA_KEY


def test_every_seal_uses_a_fresh_ephemeral_key(identity) -> None:
    first = seal(raw_public(identity), DATA_KEY, info=INFO)
    second = seal(raw_public(identity), DATA_KEY, info=INFO)
    assert first[1:33] != second[1:33]
    assert first != second


def test_another_identity_cannot_open_it(identity) -> None:
    sealed = seal(raw_public(identity), DATA_KEY, info=INFO)
    with pytest.raises(SealedKeyError, match="does not open"):
        open_sealed(x25519.X25519PrivateKey.generate(), sealed, info=INFO)


def test_another_info_cannot_open_it(identity) -> None:
    sealed = seal(raw_public(identity), DATA_KEY, info=INFO)
    with pytest.raises(SealedKeyError, match="does not open"):
        open_sealed(identity, sealed, info=delivery_info(b"delivery 43"))


def test_any_flipped_byte_fails(identity) -> None:
    sealed = seal(raw_public(identity), DATA_KEY, info=INFO)
    for position in range(1, len(sealed)):
        tampered = bytearray(sealed)
        tampered[position] ^= 0x01
        with pytest.raises(SealedKeyError):
            open_sealed(identity, bytes(tampered), info=INFO)


def test_malformed_sealed_keys_are_refused(identity) -> None:
    sealed = seal(raw_public(identity), DATA_KEY, info=INFO)
    with pytest.raises(SealedKeyError, match="version 2"):
        open_sealed(identity, b"\x02" + sealed[1:], info=INFO)
    with pytest.raises(SealedKeyError, match="81 bytes"):
        open_sealed(identity, sealed[:-1], info=INFO)
    with pytest.raises(SealedKeyError, match="empty"):
        open_sealed(identity, b"", info=INFO)
    with pytest.raises(SealedKeyError, match="base64url"):
        open_sealed_text(identity, "not base64!", info=INFO)


def test_only_32_byte_data_keys_are_sealed(identity) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        seal(raw_public(identity), bytes(16), info=INFO)


@pytest.mark.skipif(hpke is None, reason="this cryptography has no HPKE")
def test_it_is_rfc_9180_hpke_as_cryptography_implements_it(identity) -> None:
    suite = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
    sealed = seal(raw_public(identity), DATA_KEY, info=INFO)
    assert suite.decrypt(sealed[1:], identity, info=INFO) == DATA_KEY
    theirs = b"\x01" + suite.encrypt(DATA_KEY, identity.public_key(), info=INFO)
    assert open_sealed(identity, theirs, info=INFO) == DATA_KEY


@pytest.mark.skipif(hpke is None, reason="this cryptography has no HPKE")
def test_the_construction_for_older_cryptography_matches_hpke(identity, monkeypatch) -> None:
    """Without cryptography's HPKE (before 47) the module's own RFC 9180 code is used."""
    with_library = seal(raw_public(identity), DATA_KEY, info=INFO)
    monkeypatch.setattr(sealing, "_hpke", None)
    without_library = seal(raw_public(identity), DATA_KEY, info=INFO)
    assert open_sealed(identity, with_library, info=INFO) == DATA_KEY
    assert open_sealed(identity, without_library, info=INFO) == DATA_KEY
    with pytest.raises(SealedKeyError):
        open_sealed(x25519.X25519PrivateKey.generate(), without_library, info=INFO)
    with pytest.raises(SealedKeyError):
        open_sealed(identity, without_library, info=b"other")
    monkeypatch.undo()
    assert open_sealed(identity, without_library, info=INFO) == DATA_KEY


# --- public keys ---------------------------------------------------------------------------------


def test_public_keys_are_read_from_base64url_base64_or_pem(identity) -> None:
    raw = raw_public(identity)
    pem = identity.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert load_public_key(b64url_encode(raw)) == raw
    assert load_public_key(base64.b64encode(raw).decode()) == raw
    assert load_public_key(f"  {b64url_encode(raw)}\n".encode()) == raw
    assert load_public_key(pem) == raw
    assert load_public_key(pem.decode()) == raw
    assert sealing.public_key_text(identity) == b64url_encode(raw)


@pytest.mark.parametrize("point", LOW_ORDER)
def test_low_order_public_keys_are_refused(point: str) -> None:
    raw = bytes.fromhex(point)
    with pytest.raises(InvalidKeyError, match="low-order"):
        load_public_key(b64url_encode(raw))
    with pytest.raises(InvalidKeyError, match="low-order"):
        seal(raw, DATA_KEY, info=INFO)


@pytest.mark.parametrize("point", NON_CANONICAL)
def test_non_canonical_public_keys_are_refused(point: str) -> None:
    with pytest.raises(InvalidKeyError, match="canonical"):
        load_public_key(b64url_encode(bytes.fromhex(point)))


def test_public_keys_of_the_wrong_size_kind_or_text_are_refused() -> None:
    with pytest.raises(InvalidKeyError, match="32 bytes, not 31"):
        load_public_key(b64url_encode(os.urandom(31)))
    with pytest.raises(InvalidKeyError, match="neither PEM nor base64url"):
        load_public_key("this is no key!")
    ed = ed25519.Ed25519PrivateKey.generate().public_key()
    pem = ed.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(InvalidKeyError, match="Ed25519 key, not an X25519 key"):
        load_public_key(pem)
    with pytest.raises(InvalidKeyError, match="cannot be read"):
        load_public_key("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")


# --- private keys --------------------------------------------------------------------------------


def test_private_keys_are_read_from_pem_or_base64url(identity) -> None:
    pem = sealing.private_key_pem(identity)
    raw = identity.private_bytes_raw()
    for text in (pem, pem.decode(), b64url_encode(raw), b64url_encode(raw) + "\n"):
        assert raw_public(load_private_key(text)) == raw_public(identity)


def test_a_private_key_made_by_openssl_is_read(tmp_path) -> None:
    try:
        made = subprocess.run(
            ["openssl", "genpkey", "-algorithm", "X25519"],
            capture_output=True,
            check=True,
            timeout=10,
        )
    except FileNotFoundError:
        pytest.skip("no openssl on PATH")
    key = load_private_key(made.stdout)
    sealed = seal(raw_public(key), DATA_KEY, info=INFO)
    assert open_sealed(key, sealed, info=INFO) == DATA_KEY


def test_unusable_private_keys_are_refused(identity) -> None:
    encrypted = identity.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    with pytest.raises(InvalidKeyError, match="encrypted"):
        load_private_key(encrypted)
    ed = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(InvalidKeyError, match="Ed25519 key, not an X25519 key"):
        load_private_key(ed)
    with pytest.raises(InvalidKeyError, match="32 bytes, not 16"):
        load_private_key(b64url_encode(bytes(16)))
    with pytest.raises(InvalidKeyError, match="neither PEM nor base64url"):
        load_private_key("%%%")
