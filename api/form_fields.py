"""Which of an upload form's text fields are ours, which are ignored, and which are misspellings.

HTML forms send more than the API asks for: a named submit button (`submit=Upload`), a CSRF token,
a framework's hidden fields. Those are ignored and named back to the client (`ignored_fields`). A
field that looks like one of ours misspelt is refused instead, since ignoring it would silently drop
what the client asked for (`presets=web` processed with the default preset).

"Looks like" is decided on names folded to lower case with the separators `-`, `_`, `.` and spaces
removed (so `Callback-URL` is `callback_url`): equal, equal but for one trailing `s` (`presets`,
`output`, `op`), or a difflib ratio of at least MISSPELLING_RATIO (about one letter wrong, missing or
extra in five: `prest`, `opts`, `callbak_url`). A name too unlike every field (`submit`, `csrf_token`,
`_token`, `utf8`, `commit`, `title`) is ignored.

The number and size of the fields are bounded where they are read (api/uploads.py: MAX_PARTS,
MAX_TEXT_FIELD_BYTES, MAX_PART_HEADER_BYTES); names are shortened here before they are echoed.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence

MISSPELLING_RATIO = 0.8
# How much of a client's field name is echoed back (in an error or in `ignored_fields`).
SHOWN_NAME_CHARS = 40

UNKNOWN_FIELD = "Unknown form field {name!r} (did you mean {known!r}?); the fields are: {fields}."

_SEPARATORS = re.compile(r"[-_. ]+")


class FieldMisspelt(Exception):
    """A form field looks like one of ours misspelt; the message is what the client sees."""


def _folded(name: str) -> str:
    return _SEPARATORS.sub("", name.casefold())


def _singular(name: str) -> str:
    return name[:-1] if name.endswith("s") else name


def meant_field(name: str, known: Sequence[str]) -> str | None:
    """The known field `name` looks like a misspelling of, or None if it is unlike all of them."""
    folded = _folded(name)
    if not folded:
        return None
    candidates = {_folded(field): field for field in known}
    for candidate, field in candidates.items():
        if folded == candidate or _singular(folded) == _singular(candidate):
            return field
    close = difflib.get_close_matches(folded, candidates, n=1, cutoff=MISSPELLING_RATIO)
    return candidates[close[0]] if close else None


def ignored_fields(names: Iterable[str], known: Sequence[str]) -> list[str]:
    """The fields of `names` that are not ours, each once, shortened, in the order sent; raises
    FieldMisspelt for the first that looks like one of ours misspelt."""
    ignored: list[str] = []
    for name in names:
        if name in known:
            continue
        meant = meant_field(name, known)
        shown = name[:SHOWN_NAME_CHARS]
        if meant is not None:
            raise FieldMisspelt(UNKNOWN_FIELD.format(name=shown, known=meant, fields=", ".join(known)))
        if shown not in ignored:
            ignored.append(shown)
    return ignored
