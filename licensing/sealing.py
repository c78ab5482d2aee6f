"""Sealing a package's data key to a buyer's X25519 public key.

A buyer who registered a public key gets the data key sealed to it (``wrapped_key``), never in
clear. The construction is HPKE (RFC 9180), base mode, single shot, with the suite
DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / AES-256-GCM (KEM 0x0020, KDF 0x0001, AEAD 0x0002),
the ``info`` string binding the sealed key to its use, and no associated data. Any HPKE library
opens it. ``cryptography``'s own HPKE is used where it exists (version 47 and later); older
versions fall back to the same construction written here from its primitives, so the buyer's
tool works with either (tests check the two against each other).

Sealed key, version 1 (81 bytes; its text form is base64url without padding, 108 characters)::

    offset  size  field
    0       1     version, 0x01 (the suite above)
    1       32    enc: the sender's ephemeral X25519 public key
    33      48    AES-256-GCM ciphertext of the 32-byte data key || tag (16)

For a delivery, ``info`` is :func:`delivery_info` of the package's context (the header field of
:mod:`licensing.envelope`), so a sealed key opens only together with the package it was made for
and ``python -m licensing.decrypt`` can rebuild ``info`` from the package alone.

Public keys are accepted as base64url (or standard base64) of the 32 raw bytes, or as a PEM
SubjectPublicKeyInfo; private keys as PEM PKCS#8 (unencrypted; ``openssl genpkey -algorithm
X25519`` writes one) or base64url of the 32 raw bytes. Public keys that are not canonical or of
low order (every shared secret with them is zero, RFC 7748 section 6.1) are refused.

Needs only the standard library and ``cryptography``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

try:
    from cryptography.hazmat.primitives import hpke as _hpke
except ImportError:  # cryptography < 47: the construction below is used instead
    _hpke = None

SEALED_VERSION = 1
KEY_SIZE = 32
ENC_SIZE = 32
TAG_SIZE = 16
SEALED_SIZE = 1 + ENC_SIZE + KEY_SIZE + TAG_SIZE
DELIVERY_INFO_PREFIX = b"marketplace delivery data key v1\x00"

_P = 2**255 - 19


class InvalidKeyError(ValueError):
    """A public or private key that cannot be used; the message says why."""


class SealedKeyError(ValueError):
    """A sealed key that is malformed or does not open with this private key and info."""


def delivery_info(context: bytes) -> bytes:
    """The HPKE ``info`` for the data key of the package whose header context is ``context``."""
    return DELIVERY_INFO_PREFIX + bytes(context)


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str | bytes) -> bytes:
    """Decode base64url or standard base64, padded or not; ValueError on anything else."""
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError as error:
            raise ValueError("not base64 text") from error
    text = "".join(text.split()).replace("+", "-").replace("/", "_")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text.encode("ascii"), altchars=b"-_", validate=True)
    except (binascii.Error, UnicodeEncodeError) as error:
        raise ValueError("not base64url text") from error


def check_public_key(raw: bytes) -> x25519.X25519PublicKey:
    """The X25519 public key of 32 raw bytes, refusing non-canonical and low-order points."""
    if len(raw) != KEY_SIZE:
        raise InvalidKeyError(f"an X25519 public key is {KEY_SIZE} bytes, not {len(raw)}")
    if raw[31] & 0x80 or int.from_bytes(raw, "little") >= _P:
        raise InvalidKeyError("the X25519 public key is not canonically encoded")
    key = x25519.X25519PublicKey.from_public_bytes(bytes(raw))
    try:
        # Any scalar gives an all-zero shared secret with a low-order point (OpenSSL refuses it).
        x25519.X25519PrivateKey.generate().exchange(key)
    except ValueError as error:
        raise InvalidKeyError(
            "the X25519 public key is a low-order point; it cannot be used"
        ) from error
    return key


def load_public_key(data: str | bytes) -> bytes:
    """Parse a buyer's public key (base64url of the raw 32 bytes, or PEM); its raw bytes."""
    text = data.decode("ascii", "replace") if isinstance(data, bytes) else data
    if "-----BEGIN" in text:
        try:
            key = serialization.load_pem_public_key(text.strip().encode("ascii"))
        except (ValueError, TypeError, UnicodeEncodeError) as error:
            raise InvalidKeyError("the PEM public key cannot be read") from error
        if not isinstance(key, x25519.X25519PublicKey):
            raise InvalidKeyError(f"the PEM holds a {_kind(key)} key, not an X25519 key")
        raw = key.public_bytes_raw()
    else:
        try:
            raw = b64url_decode(text)
        except ValueError as error:
            raise InvalidKeyError(
                "the public key is neither PEM nor base64url of 32 raw bytes"
            ) from error
    check_public_key(raw)
    return raw


def load_private_key(data: str | bytes) -> x25519.X25519PrivateKey:
    """Parse a buyer's private key: PEM PKCS#8 (unencrypted) or base64url of 32 raw bytes."""
    text = data.decode("ascii", "replace") if isinstance(data, bytes) else data
    if "-----BEGIN" in text:
        if "ENCRYPTED" in text:
            raise InvalidKeyError(
                "the private key PEM is encrypted; give an unencrypted PKCS#8 PEM"
            )
        try:
            key = serialization.load_pem_private_key(text.strip().encode("ascii"), password=None)
        except (ValueError, TypeError, UnicodeEncodeError) as error:
            raise InvalidKeyError("the PEM private key cannot be read") from error
        if not isinstance(key, x25519.X25519PrivateKey):
            raise InvalidKeyError(f"the PEM holds a {_kind(key)} key, not an X25519 key")
        return key
    try:
        raw = b64url_decode(text)
    except ValueError as error:
        raise InvalidKeyError(
            "the private key is neither PEM nor base64url of 32 raw bytes"
        ) from error
    if len(raw) != KEY_SIZE:
        raise InvalidKeyError(f"an X25519 private key is {KEY_SIZE} bytes, not {len(raw)}")
    return x25519.X25519PrivateKey.from_private_bytes(raw)


def _kind(key: object) -> str:
    return type(key).__name__.removeprefix("_").replace("PublicKey", "").replace("PrivateKey", "")


def private_key_pem(key: x25519.X25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_key_text(key: x25519.X25519PrivateKey | x25519.X25519PublicKey) -> str:
    """The base64url form of a public key, as a buyer registers it."""
    public = key.public_key() if isinstance(key, x25519.X25519PrivateKey) else key
    return b64url_encode(public.public_bytes_raw())


def seal(public_key_raw: bytes, data_key: bytes, *, info: bytes) -> bytes:
    """Seal a 32-byte data key to an X25519 public key; the 81-byte sealed key."""
    if len(data_key) != KEY_SIZE:
        raise ValueError(f"the data key must be {KEY_SIZE} bytes, not {len(data_key)}")
    public = check_public_key(public_key_raw)
    if _hpke is not None:
        body = _suite().encrypt(bytes(data_key), public, info=bytes(info))
    else:
        body = _seal_base(public, bytes(data_key), bytes(info))
    return bytes([SEALED_VERSION]) + body


def open_sealed(private_key: x25519.X25519PrivateKey, sealed: bytes, *, info: bytes) -> bytes:
    """Open a sealed key; SealedKeyError unless it was sealed to this key with this info."""
    if len(sealed) < 1:
        raise SealedKeyError("the sealed key is empty")
    if sealed[0] != SEALED_VERSION:
        raise SealedKeyError(
            f"sealed key version {sealed[0]} is not supported (this reader: {SEALED_VERSION})"
        )
    if len(sealed) != SEALED_SIZE:
        raise SealedKeyError(f"a sealed key is {SEALED_SIZE} bytes, not {len(sealed)}")
    try:
        if _hpke is not None:
            key = _suite().decrypt(bytes(sealed[1:]), private_key, info=bytes(info))
        else:
            key = _open_base(private_key, bytes(sealed[1:]), bytes(info))
    except (InvalidTag, ValueError) as error:
        raise SealedKeyError(
            "the sealed key does not open: it was sealed to another key, for another package, "
            "or altered"
        ) from error
    return key


def seal_text(public_key_raw: bytes, data_key: bytes, *, info: bytes) -> str:
    return b64url_encode(seal(public_key_raw, data_key, info=info))


def open_sealed_text(private_key: x25519.X25519PrivateKey, text: str, *, info: bytes) -> bytes:
    try:
        sealed = b64url_decode(text)
    except ValueError as error:
        raise SealedKeyError("the sealed key is not base64url text") from error
    return open_sealed(private_key, sealed, info=info)


def _suite() -> Any:  # the type exists only in cryptography >= 47
    return _hpke.Suite(_hpke.KEM.X25519, _hpke.KDF.HKDF_SHA256, _hpke.AEAD.AES_256_GCM)


# --- RFC 9180, base mode, single shot, for cryptography without HPKE ---------------------------

_KEM_SUITE = b"KEM" + struct.pack(">H", 0x0020)
_HPKE_SUITE = b"HPKE" + struct.pack(">HHH", 0x0020, 0x0001, 0x0002)
_NONCE_SIZE = 12


def _extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt or bytes(32), ikm, hashlib.sha256).digest()


def _expand(prk: bytes, info: bytes, length: int) -> bytes:
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def _labeled_extract(suite: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    return _extract(salt, b"HPKE-v1" + suite + label + ikm)


def _labeled_expand(suite: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    return _expand(prk, struct.pack(">H", length) + b"HPKE-v1" + suite + label + info, length)


def _shared_secret(dh: bytes, enc: bytes, recipient: bytes) -> bytes:
    prk = _labeled_extract(_KEM_SUITE, b"", b"eae_prk", dh)
    return _labeled_expand(_KEM_SUITE, prk, b"shared_secret", enc + recipient, 32)


def _key_schedule(shared_secret: bytes, info: bytes) -> tuple[bytes, bytes]:
    psk_id_hash = _labeled_extract(_HPKE_SUITE, b"", b"psk_id_hash", b"")
    info_hash = _labeled_extract(_HPKE_SUITE, b"", b"info_hash", info)
    context = b"\x00" + psk_id_hash + info_hash  # mode_base
    secret = _labeled_extract(_HPKE_SUITE, shared_secret, b"secret", b"")
    key = _labeled_expand(_HPKE_SUITE, secret, b"key", context, KEY_SIZE)
    nonce = _labeled_expand(_HPKE_SUITE, secret, b"base_nonce", context, _NONCE_SIZE)
    return key, nonce


def _seal_base(public: x25519.X25519PublicKey, plaintext: bytes, info: bytes) -> bytes:
    ephemeral = x25519.X25519PrivateKey.generate()
    enc = ephemeral.public_key().public_bytes_raw()
    recipient = public.public_bytes_raw()
    key, nonce = _key_schedule(_shared_secret(ephemeral.exchange(public), enc, recipient), info)
    return enc + AESGCM(key).encrypt(nonce, plaintext, b"")


def _open_base(private: x25519.X25519PrivateKey, body: bytes, info: bytes) -> bytes:
    enc, ciphertext = body[:ENC_SIZE], body[ENC_SIZE:]
    recipient = private.public_key().public_bytes_raw()
    dh = private.exchange(x25519.X25519PublicKey.from_public_bytes(enc))
    key, nonce = _key_schedule(_shared_secret(dh, enc, recipient), info)
    return AESGCM(key).decrypt(nonce, ciphertext, b"")
