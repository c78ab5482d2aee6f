"""Byte ranges of a GET (RFC 9110 §14): one rule for every view that serves stored bytes."""

import re

from django.http import HttpRequest

# One byte range, RFC 9110 §14.1.2: `first-last`, `first-` or `-suffix`. Longer numbers than
# any stored size are not parsed (such a Range is ignored, as the RFC allows).
_BYTE_RANGE = re.compile(r"\s*(\d{0,18})\s*-\s*(\d{0,18})\s*", re.ASCII)


class RangeNotSatisfiable(Exception):
    pass


def requested_range(request: HttpRequest, *, etag: str, size: int) -> tuple[int, int] | None:
    """The one byte range (first, last, inclusive) a GET asks for, or None for the whole
    body: no Range, or one to ignore (RFC 9110 §14.2) because it is malformed, in another
    unit, asks for several ranges (answered whole), or comes with an If-Range that is not this
    body's ETag. RangeNotSatisfiable when no byte of it exists."""
    header = request.headers.get("Range")
    if not header:
        return None
    if_range = request.headers.get("If-Range")
    if if_range is not None and if_range.strip() != etag:
        return None  # a weak or other ETag, or a date (no Last-Modified is sent)
    unit, _, spec = header.partition("=")
    found = _BYTE_RANGE.fullmatch(spec)
    if unit.strip().lower() != "bytes" or found is None or found.group(0).strip() == "-":
        return None
    first_text, last_text = found.groups()
    if not first_text:
        suffix = int(last_text)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable
        return max(size - suffix, 0), size - 1
    first = int(first_text)
    if last_text and int(last_text) < first:
        return None  # not a valid range-spec
    if first >= size:
        raise RangeNotSatisfiable
    last = min(int(last_text), size - 1) if last_text else size - 1
    return first, last
