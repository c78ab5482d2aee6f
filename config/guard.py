"""What production.py refuses as a weak secret, key or endpoint.

Each function returns why a value is weak, or None. The rules are deliberately simple: they
catch the values people actually deploy by mistake (a placeholder, a typed phrase, a repeated
pattern, the development key with a character changed, a stray space) rather than estimate
the strength of a good one.
"""

import base64
import binascii
import difflib
import math
import re
from urllib.parse import urlsplit

# Words that mark a value as written by hand for a template, a test or an example.
_PLACEHOLDER_WORDS = ("changeme", "placeholder", "example", "insecure", "devonly", "notsecret")


_HEX = set("0123456789abcdefABCDEF")
_BASE64 = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_")


def _alphabet_size(value: str) -> int:
    """The size of the smallest usual alphabet the value is written in: what a generator of
    such values picks each character from."""
    chars = set(value)
    if chars <= _HEX:
        return 16
    if chars <= _BASE64:
        return 64
    return 94  # printable ASCII


def _randomness_shortfall(value: str, min_bits: float) -> bool:
    """Whether the value holds fewer than `min_bits` bits if drawn at random from its
    alphabet, or repeats its characters far more than a random draw would (a random string
    of n characters from an alphabet of A shows about A * (1 - (1 - 1/A)**n) distinct ones;
    under half of that is not chance)."""
    size = _alphabet_size(value)
    if len(value) * math.log2(size) < min_bits:
        return True
    expected_distinct = size * (1 - (1 - 1 / size) ** len(value))
    return len(set(value)) < expected_distinct / 2


def _repeats(value: str) -> bool:
    """Whether a long stretch of the value occurs twice in it (a pattern typed or pasted
    twice); a random value of this length has no repeat longer than a few characters."""
    size = max(8, len(value) // 4)
    seen: set[str] = set()
    for start in range(len(value) - size + 1):
        piece = value[start : start + size]
        if piece in seen:
            return True
        seen.add(piece)
    return False


def _period(value: str) -> int:
    """The length of the shortest unit the value repeats (its own length if none)."""
    for size in range(1, len(value) // 2 + 1):
        if value == (value[:size] * (len(value) // size + 1))[: len(value)]:
            return size
    return len(value)


def _letters_and_digits(value: str) -> str:
    return re.sub(r"[^a-z0-9]", "", value.lower())


def secret_weakness(
    value: str, *, min_length: int, min_bits: float, known: tuple[str, ...] = ()
) -> str | None:
    """Why a secret (a key, a token) is too weak to deploy, or None.

    `known` lists values that are public (the development key): the secret must not be one
    of them, contain one, or differ from one by a few characters."""
    if value != value.strip() or any(char.isspace() for char in value):
        return "contains whitespace (a stray space or newline from copying it?)"
    if len(value) < min_length:
        return f"too short: use at least {min_length} random characters"
    folded = _letters_and_digits(value)
    for public in known:
        public_folded = _letters_and_digits(public)
        if public_folded in folded or (
            difflib.SequenceMatcher(None, folded, public_folded).ratio() > 0.6
        ):
            return "is the public development value or a variation of it"
    if any(word in folded for word in _PLACEHOLDER_WORDS):
        return "looks like a placeholder: use a value generated at random"
    if _repeats(value):
        return "repeats a pattern: use a value generated at random"
    if _randomness_shortfall(value, min_bits):
        return (
            "too little randomness (too short for its alphabet, or too few distinct "
            "characters): use a random value"
        )
    return None


def master_key_weakness(text: str) -> str | None:
    """Why a base64 master key is not 32 random bytes, or None."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return "must be 32 random bytes in base64"
    if len(raw) != 32:
        return "must be 32 random bytes in base64"
    # Thirty-two random bytes almost always hold 25 or more distinct values, and are all
    # printable characters about once in 10**13: a key failing these was typed or built.
    if len(set(raw)) < 16 or _period(raw.hex()) <= 32:
        return "is not random (too few distinct bytes, or a repeated pattern)"
    if all(32 <= byte < 127 for byte in raw):
        return "is text, not random bytes: use 32 random bytes in base64"
    return None


def http_url_weakness(url: str) -> str | None:
    """Why an endpoint may not be called over the network as configured, or None."""
    parts = urlsplit(url)
    if parts.scheme != "https":
        return "must be an https:// URL"
    if not parts.hostname:
        return "must be an https:// URL with a host"
    return None
