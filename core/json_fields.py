"""Parsing a form field that holds JSON (`ops`, `outputs`) within a size and a nesting depth.

Python's json module recurses once per bracket: a couple of kilobytes of `[[[[...` reach the
interpreter's recursion limit and raise RecursionError, which is no ValueError (a 500 for the
client). The depth is therefore measured on the raw text first, outside strings, before anything is
parsed; the size is checked before that.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

# The deepest legitimate field is `outputs`: an object of lists of operations, whose values are at
# most a list ({"name": [{"op": "crop", "box": [..]}]}): four levels. Eight leaves room to grow.
MAX_JSON_DEPTH = 8
# The API already refuses a form field over 8 KiB (api.uploads.MAX_TEXT_FIELD_BYTES); this holds
# for any other caller, in UTF-8 bytes.
MAX_JSON_FIELD_BYTES = 8 * 1024

NOT_JSON = "`{field}` is not valid JSON."
TOO_DEEP = f"`{{field}}` is nested more than {MAX_JSON_DEPTH} levels deep."
TOO_LARGE = f"`{{field}}` is larger than {MAX_JSON_FIELD_BYTES:,} bytes."
HAS_NUL = "`{field}` contains a NUL character (\\u0000), which cannot be stored."

# A JSON string, escapes included: brackets inside strings do not nest.
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


class JsonFieldInvalid(ValueError):
    """The field cannot be used; the message names it and says why."""


def parse_json_field(field: str, raw: str) -> Any:
    """`raw` parsed as JSON, or JsonFieldInvalid when it is too large, too deep or not JSON."""
    if len(raw.encode("utf-8", errors="surrogatepass")) > MAX_JSON_FIELD_BYTES:
        raise JsonFieldInvalid(TOO_LARGE.format(field=field))
    if nesting_depth(raw) > MAX_JSON_DEPTH:
        raise JsonFieldInvalid(TOO_DEEP.format(field=field))
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        raise JsonFieldInvalid(NOT_JSON.format(field=field)) from None
    # PostgreSQL's jsonb refuses \u0000 in any string: the row's INSERT would fail (a 500).
    if _has_nul(value):
        raise JsonFieldInvalid(HAS_NUL.format(field=field))
    return value


def _has_nul(value: Any) -> bool:
    """Whether a NUL is in any string or key of `value` (at most MAX_JSON_DEPTH deep)."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, list):
        return any(_has_nul(item) for item in value)
    if isinstance(value, dict):
        return any("\x00" in key or _has_nul(item) for key, item in value.items())
    return False


def nesting_depth(raw: str) -> int:
    """How deeply the brackets of `raw` nest, strings left out (an upper bound for text that is
    not valid JSON, which json.loads then refuses)."""
    brackets = (_STEP[char] for char in _STRING.sub("", raw) if char in _STEP)
    return max(accumulate(brackets, initial=0))
