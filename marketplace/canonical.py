"""Canonical JSON: the exact bytes that manifests (and later, audit events) are signed over.

UTF-8 JSON, object keys sorted by code point, no insignificant whitespace, non-ASCII characters
as themselves. Only objects, arrays, strings, integers, booleans and null are allowed: floats
have no single textual form, so a document containing one is refused rather than guessed at.
"""

import json
from typing import Any


def _check(value: Any, path: str) -> None:
    if isinstance(value, bool) or value is None or isinstance(value, int | str):
        return
    if isinstance(value, float):
        raise ValueError(f"{path} is a floating-point number; use an integer or a string")
    if isinstance(value, list):
        for index, item in enumerate(value):
            _check(item, f"{path}[{index}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{path} has a non-string key {key!r}")
            _check(item, f"{path}.{key}")
        return
    raise ValueError(f"{path} has a value of type {type(value).__name__}, which JSON cannot hold")


def canonical_check(value: Any) -> None:
    """Raises ValueError naming the first value that has no canonical form."""
    _check(value, "$")


def canonical_json(value: Any) -> bytes:
    _check(value, "$")
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")
