"""JWK Sets and signature checks with no Django: what an offline verifier needs.

Two signature algorithms are read and checked (RFC 7518, RFC 8037):

- ``EdDSA``: Ed25519, JWK ``{"kty": "OKP", "crv": "Ed25519", "x"}``, 64-byte signatures;
- ``ES256``: ECDSA on P-256 with SHA-256, JWK ``{"kty": "EC", "crv": "P-256", "x", "y"}``,
  signatures in JOSE form: ``r || s``, each a 32-byte big-endian integer (not DER).
"""

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

ED25519 = "EdDSA"
ES256 = "ES256"
ALGORITHMS = (ED25519, ES256)

# P-256 coordinates, scalars and so each half of an ES256 signature are 32 bytes.
_P256_BYTES = 32

VerifyingKey = Ed25519PublicKey | ec.EllipticCurvePublicKey


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not base64url") from exc


def es256_signature_from_der(der: bytes) -> bytes:
    """An ECDSA signature as DER (KMS, OpenSSL, `cryptography`) in JOSE form (r || s)."""
    r, s = decode_dss_signature(der)
    return r.to_bytes(_P256_BYTES, "big") + s.to_bytes(_P256_BYTES, "big")


def es256_signature_to_der(raw: bytes) -> bytes:
    if len(raw) != 2 * _P256_BYTES:
        raise ValueError(f"an ES256 signature is {2 * _P256_BYTES} bytes, not {len(raw)}")
    return encode_dss_signature(
        int.from_bytes(raw[:_P256_BYTES], "big"), int.from_bytes(raw[_P256_BYTES:], "big")
    )


@dataclass(frozen=True)
class PublicKey:
    kid: str
    algorithm: str
    key: VerifyingKey

    def verifies(self, signature: bytes, message: bytes) -> bool:
        """Whether `signature` (JOSE form) is this key's over `message`. Never raises on a
        malformed signature: it simply does not verify."""
        try:
            if isinstance(self.key, Ed25519PublicKey):
                self.key.verify(signature, message)
            else:
                self.key.verify(
                    es256_signature_to_der(signature), message, ec.ECDSA(hashes.SHA256())
                )
        except (InvalidSignature, ValueError):
            return False
        return True

    def der(self) -> bytes:
        """The SubjectPublicKeyInfo, DER: how the key store keeps a public key."""
        return self.key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def jwk(self) -> dict[str, Any]:
        if isinstance(self.key, Ed25519PublicKey):
            raw = self.key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            material = {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}
        else:
            numbers = self.key.public_numbers()
            material = {
                "kty": "EC",
                "crv": "P-256",
                "x": b64url(numbers.x.to_bytes(_P256_BYTES, "big")),
                "y": b64url(numbers.y.to_bytes(_P256_BYTES, "big")),
            }
        return {**material, "kid": self.kid, "alg": self.algorithm, "use": "sig"}


def public_key_from_der(kid: str, der: bytes) -> PublicKey:
    """Reads a SubjectPublicKeyInfo; raises ValueError unless it is Ed25519 or P-256."""
    key = serialization.load_der_public_key(der)
    if isinstance(key, Ed25519PublicKey):
        return PublicKey(kid, ED25519, key)
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return PublicKey(kid, ES256, key)
    raise ValueError(f"{kid} is neither an Ed25519 nor a P-256 public key")


def _coordinate(jwk: dict[str, Any], name: str) -> bytes:
    value = jwk.get(name)
    if not isinstance(value, str):
        raise ValueError(f'no "{name}"')
    return b64url_decode(value)


def public_key_from_jwk(jwk: dict[str, Any], kid: str) -> PublicKey | None:
    """The signing key a JWK holds; None for a key of a type nothing here signs with (RSA,
    another curve, an encryption key). Raises ValueError for a readable type whose material
    or `alg` is wrong."""
    if jwk.get("use", "sig") != "sig":
        return None
    kty, crv = jwk.get("kty"), jwk.get("crv")
    if kty == "OKP" and crv == "Ed25519":
        algorithm = ED25519
        key: VerifyingKey = Ed25519PublicKey.from_public_bytes(_coordinate(jwk, "x"))
    elif kty == "EC" and crv == "P-256":
        algorithm = ES256
        x, y = _coordinate(jwk, "x"), _coordinate(jwk, "y")
        if len(x) != _P256_BYTES or len(y) != _P256_BYTES:
            raise ValueError(f"P-256 coordinates are {_P256_BYTES} bytes each")
        # Refuses a point that is not on the curve (an invalid-curve attack's key).
        key = ec.EllipticCurvePublicNumbers(
            int.from_bytes(x, "big"), int.from_bytes(y, "big"), ec.SECP256R1()
        ).public_key()
    else:
        return None
    declared = jwk.get("alg", algorithm)
    if declared != algorithm:
        raise ValueError(f'a {kty} {crv} key signs with {algorithm}, not "{declared}"')
    return PublicKey(kid, algorithm, key)


def public_keys_from_jwks(document: Any) -> dict[str, PublicKey]:
    """Reads a JWK Set; raises ValueError naming what is wrong with it."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError('a JWK Set is a JSON object with a "keys" list')
    keys: dict[str, PublicKey] = {}
    for index, jwk in enumerate(document["keys"]):
        if not isinstance(jwk, dict):
            raise ValueError(f"keys[{index}] is not a JSON object")
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not kid:
            raise ValueError(f"keys[{index}] has no kid")
        try:
            key = public_key_from_jwk(jwk, kid)
        except ValueError as exc:
            raise ValueError(f"keys[{index}] ({kid}) has an unreadable public key: {exc}") from exc
        if key is not None:
            keys[kid] = key
    return keys
