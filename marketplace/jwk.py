"""JWK Sets and signature checks with no Django: what an offline verifier needs."""

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

ED25519 = "EdDSA"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not base64url") from exc


@dataclass(frozen=True)
class PublicKey:
    kid: str
    algorithm: str
    key: Ed25519PublicKey

    def verifies(self, signature: bytes, message: bytes) -> bool:
        try:
            self.key.verify(signature, message)
        except InvalidSignature:
            return False
        return True


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
        if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
            continue  # a key of another type signs nothing this platform checks offline
        try:
            raw = b64url_decode(str(jwk.get("x", "")))
            keys[kid] = PublicKey(kid, ED25519, Ed25519PublicKey.from_public_bytes(raw))
        except ValueError as exc:
            raise ValueError(f"keys[{index}] ({kid}) has an unreadable public key: {exc}") from exc
    return keys
