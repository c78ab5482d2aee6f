"""JSON bodies read within limits: size, nesting, and what the database can store.

`json_parse` is the one reader of a JSON body: the API's parser (`JSONParser` below, DRF's
`DEFAULT_PARSER_CLASSES`), the payment webhook and the local gateway's page use it. It refuses,
each with a problem the client can act on (docs/api.md, "Bad input"):

- a body over `MARKETPLACE_JSON_MAX_BYTES`: 413 `payload-too-large`; the API reads at most one
  byte more than that, whatever the body's length;
- arrays and objects nested deeper than `MARKETPLACE_JSON_MAX_DEPTH`: 400 `json-too-deep`,
  measured on the raw bytes before `json` parses anything, since its parser recurses once per
  level and a deep enough body is a RecursionError before any hook could count;
- everything else as 400 `parse-error`: bytes that are not UTF-8 (RFC 8259 §8.1), text that is
  not JSON, `NaN`, `Infinity` or a number beyond a float's range, a name twice in one object
  (RFC 8259 only says names SHOULD be unique, and parsers disagree on which one wins, so a body
  one reader checks and another acts on could mean two things), a lone surrogate (`\\ud800`
  without its pair is not text: neither PostgreSQL nor a UTF-8 answer can carry it), and NUL
  (`\\u0000`, which PostgreSQL's text and jsonb refuse) unless the view stores nothing of the
  body and says so with `json_nul_allowed = True`.
"""

import json
import math
import re
from array import array
from itertools import accumulate
from typing import IO, Any

from django.conf import settings
from rest_framework.parsers import BaseParser
from rest_framework.renderers import JSONRenderer

from marketplace.exceptions import ApplicationError


class JsonBodyRefused(ApplicationError):
    """Every refusal of `json_parse`: a caller that records refused bodies catches this one."""

    code = "parse-error"
    title = "The body is not JSON the platform accepts"
    status = 400


class JsonBodyTooLarge(JsonBodyRefused):
    code = "payload-too-large"
    title = "The body is too large"
    status = 413


class JsonBodyTooDeep(JsonBodyRefused):
    code = "json-too-deep"
    title = "The JSON body is nested too deeply"
    status = 400


# A JSON string, escapes included, or an unterminated one up to the end (which `json` then
# refuses): brackets inside strings are text, not structure.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\Z)', re.DOTALL)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
# Opening brackets step +1, closing ones -1 (0xFF read as a signed byte).
_STEP = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
# The only way a parsed string can hold NUL or a lone surrogate: `json` refuses raw control
# characters in strings, and the strict UTF-8 decoder refuses encoded surrogates.
_SUSPECT_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")
_NUL_OR_SURROGATE = re.compile("[\x00\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x1f]")


def json_depth_exceeds(raw: bytes, max_depth: int) -> bool:
    """Whether arrays and objects in `raw` nest deeper than `max_depth`, found without recursion.

    Counting the brackets outside strings never underestimates what `json` would reach: up to
    the first bracket that closes more than was opened, the running count is the parser's
    depth, and at that bracket the parser stops with an error.
    """
    if raw.count(b"[") + raw.count(b"{") <= max_depth:
        return False  # the common case, decided at C speed
    structure = _STRING.sub(b"", raw).translate(None, _NOT_BRACKET)
    if structure.count(b"[") + structure.count(b"{") <= max_depth:
        return False
    if re.search(rb"[\[{]{%d}" % (max_depth + 1), structure):
        return True  # a run of openings, as a deep body mostly is: found at C speed
    return max(accumulate(array("b", structure.translate(_STEP)))) > max_depth


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise ValueError(f'the name "{_shown(name)}" appears twice in one object')
            seen.add(name)
    return result


def _constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is beyond a float's range")
    return value


def _shown(text: str) -> str:
    """`text` cut to a readable length, with what an answer cannot carry raw escaped."""
    text = _CONTROL.sub(lambda match: f"\\u{ord(match.group()):04x}", text[:60])
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _refused_string_at(value: Any, pattern: re.Pattern[str]) -> tuple[str, str] | None:
    """(JSON Pointer, string) of a name or string in `value` that `pattern` finds, if any."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        pointer, item = stack.pop()
        if isinstance(item, dict):
            for name, child in item.items():
                child_pointer = f"{pointer}/{_shown(name.replace('~', '~0').replace('/', '~1'))}"
                if pattern.search(name):
                    return child_pointer, name
                stack.append((child_pointer, child))
        elif isinstance(item, list):
            stack.extend((f"{pointer}/{index}", child) for index, child in enumerate(item))
        elif isinstance(item, str) and pattern.search(item):
            return pointer, item
    return None


def json_limits() -> tuple[int, int]:
    """(MARKETPLACE_JSON_MAX_BYTES, MARKETPLACE_JSON_MAX_DEPTH)."""
    return settings.JSON_MAX_BYTES, settings.JSON_MAX_DEPTH


def _too_large(max_bytes: int) -> JsonBodyTooLarge:
    return JsonBodyTooLarge(
        f"The body is larger than {max_bytes} bytes.", extra={"max_bytes": max_bytes}
    )


def _too_deep(max_depth: int) -> JsonBodyTooDeep:
    return JsonBodyTooDeep(
        f"The JSON body nests arrays and objects deeper than {max_depth} levels.",
        extra={"max_depth": max_depth},
    )


def json_parse(raw: bytes, *, nul_allowed: bool = False) -> Any:
    """The value of the JSON body `raw`, or JsonBodyRefused saying why not (see above)."""
    max_bytes, max_depth = json_limits()
    if len(raw) > max_bytes:
        raise _too_large(max_bytes)
    if json_depth_exceeds(raw, max_depth):
        raise _too_deep(max_depth)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JsonBodyRefused(f"The body is not UTF-8 (byte {exc.start} is not).") from None
    try:
        value = json.loads(
            text,
            object_pairs_hook=_object,
            parse_constant=_constant,
            parse_float=_float,
        )
    except RecursionError:  # not reached within the depth limit; a 400 all the same
        raise _too_deep(max_depth) from None
    except ValueError as exc:  # JSONDecodeError, the hooks' refusals, Python's int digits limit
        raise JsonBodyRefused(f"The body is not valid JSON: {exc}.") from None
    if _SUSPECT_ESCAPE.search(raw):
        found = _refused_string_at(value, _SURROGATE if nul_allowed else _NUL_OR_SURROGATE)
        if found is not None:
            pointer, string = found
            what = "a lone surrogate" if _SURROGATE.search(string) else "a NUL character"
            rule = "Unicode text" if nul_allowed else "Unicode text without \\u0000"
            raise JsonBodyRefused(
                f"The string at {pointer or '/'} holds {what}, which cannot be stored: "
                f"strings must be {rule}.",
                extra={"pointer": pointer},
            )
    return value


def json_body_read(stream: IO[bytes] | None) -> bytes:
    """The body from `stream` (a request), read no further than one byte past the size limit:
    JsonBodyTooLarge (413) if it is larger."""
    max_bytes, _ = json_limits()
    chunks: list[bytes] = []
    left = max_bytes + 1
    while stream is not None and left > 0:
        chunk = stream.read(min(left, 64 * 1024))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    raw = b"".join(chunks)
    if len(raw) > max_bytes:
        raise _too_large(max_bytes)
    return raw


class JSONParser(BaseParser):
    """DRF's JSON parser with the limits of `json_parse`.

    A view that stores nothing of its body may take NUL in strings: `json_nul_allowed = True`.
    """

    media_type = "application/json"
    renderer_class = JSONRenderer

    def parse(
        self,
        stream: IO[bytes] | None,
        media_type: str | None = None,
        parser_context: dict[str, Any] | None = None,
    ) -> Any:
        context = parser_context or {}
        encoding = str(context.get("encoding") or "utf-8")
        if encoding.lower().replace("-", "").replace("_", "") != "utf8":
            raise JsonBodyRefused(
                f"JSON bodies are UTF-8 (RFC 8259); this one is declared charset={encoding}."
            )
        view = context.get("view")
        return json_parse(
            json_body_read(stream), nul_allowed=getattr(view, "json_nul_allowed", False)
        )
