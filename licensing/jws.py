"""Compact JWS (RFC 7515) over canonical JSON: how licenses and delivery proofs are signed.

The header is `{"alg", "kid", "typ"}`; the payload is the canonical JSON of the claims
(marketplace.canonical), so the same claims always give the same bytes. Signatures are in JOSE
form (64 bytes for EdDSA and for ES256's r || s), which any JOSE library checks against the
published JWK Set.

Licenses and proofs are signed by the same license key, so each kind of token says what it is
three times over (`typ` in the header, `iss` and `aud` in the claims), and a verifier of one
kind refuses the other (docs/licensing.md).
"""

import json
import re
from dataclasses import dataclass
from typing import Any

from marketplace.canonical import canonical_json
from marketplace.jwk import PublicKey, b64url, b64url_decode


class JwsInvalid(ValueError):
    """The token is not a compact JWS this platform could have made; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class TokenKind:
    """What a token is: the header's `typ`, and the `iss` and `aud` its claims carry."""

    typ: str
    iss: str
    aud: str


LICENSE_TOKEN = TokenKind(
    typ="mkp-license+jwt", iss="marketplace:licensing", aud="marketplace:license"
)
PROOF_TOKEN = TokenKind(
    typ="mkp-proof+jws", iss="marketplace:delivery", aud="marketplace:delivery-proof"
)


@dataclass(frozen=True)
class ParsedJws:
    header: dict[str, Any]
    payload: dict[str, Any]
    signing_input: bytes
    signature: bytes

    @property
    def kid(self) -> str:
        return str(self.header.get("kid") or "")


def jws_sign(claims: dict[str, Any], signer: Any, *, kind: TokenKind) -> str:
    """`signer` has `kid`, `algorithm` and `sign(bytes) -> bytes` (marketplace.keystore).
    `claims` must already carry the kind's `iss` and `aud`: what is signed is what the caller
    stores, byte for byte."""
    if claims.get("iss") != kind.iss or claims.get("aud") != kind.aud:
        raise ValueError(f"a {kind.typ} token's claims carry iss {kind.iss!r}, aud {kind.aud!r}")
    header = {"alg": signer.algorithm, "kid": signer.kid, "typ": kind.typ}
    signing_input = f"{b64url(canonical_json(header))}.{b64url(canonical_json(claims))}"
    return f"{signing_input}.{b64url(signer.sign(signing_input.encode('ascii')))}"


_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def _b64url_part(text: str, name: str) -> bytes:
    """Decodes one part, accepting only its one canonical spelling: no padding, no characters
    outside the alphabet, no stray bits; so two different strings never verify as one token."""
    if not _B64URL.fullmatch(text):
        raise JwsInvalid(f"malformed: the {name} is not base64url")
    try:
        raw = b64url_decode(text)
    except ValueError:
        raise JwsInvalid(f"malformed: the {name} is not base64url") from None
    if b64url(raw) != text:
        raise JwsInvalid(f"malformed: the {name} is not canonical base64url")
    return raw


def _json_part(text: str, name: str) -> dict[str, Any]:
    raw = _b64url_part(text, name)
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise JwsInvalid(f"malformed: the {name} is not base64url JSON") from None
    if not isinstance(value, dict):
        raise JwsInvalid(f"malformed: the {name} is not a JSON object")
    return value


def jws_parse(token: Any) -> ParsedJws:
    if not isinstance(token, str) or not token:
        raise JwsInvalid("malformed: the token must be a non-empty string")
    if len(token) > 16_384:
        raise JwsInvalid("malformed: the token is too long")
    parts = token.split(".")
    if len(parts) != 3:
        raise JwsInvalid("malformed: a compact JWS has three dot-separated parts")
    header = _json_part(parts[0], "header")
    payload = _json_part(parts[1], "payload")
    signature = _b64url_part(parts[2], "signature")
    if not isinstance(header.get("kid"), str) or not isinstance(header.get("alg"), str):
        raise JwsInvalid("malformed: the header needs `alg` and `kid`")
    return ParsedJws(header, payload, f"{parts[0]}.{parts[1]}".encode("ascii"), signature)


def jws_verify(parsed: ParsedJws, keys: dict[str, PublicKey]) -> None:
    """Raises JwsInvalid unless a published key of that kid and algorithm signed it."""
    key = keys.get(parsed.kid)
    if key is None:
        raise JwsInvalid("unknown-key: no published key has this kid (unknown or revoked)")
    if parsed.header["alg"] != key.algorithm:
        raise JwsInvalid(f"bad-signature: the key {key.kid} signs with {key.algorithm}")
    if not key.verifies(parsed.signature, parsed.signing_input):
        raise JwsInvalid("bad-signature: the signature does not match the token")
