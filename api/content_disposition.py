"""A form part's Content-Disposition: its field name and the file name as the client meant it.

Clients spell a non-ASCII file name in four ways, and each is read here:
- raw UTF-8 in `filename="..."` (browsers, curl, requests, httpx; RFC 7578 §4.2);
- `filename*=UTF-8''na%C3%AFve.jpg` or `filename*=ISO-8859-1''...` (RFC 5987/8187, RFC 6266), which
  wins over a plain `filename` sent beside it (RFC 6266 §4.3), also split into RFC 2231
  continuations (`filename*0*=...; filename*1*=...`, as JavaMail sends long names);
- RFC 2047 encoded words in the plain parameter (`"=?UTF-8?B?...?="`, `"=?UTF-8?Q?...?="`), which
  .NET's MultipartFormDataContent and JavaMail send by default.
Anything that does not decode (an unknown charset, bad base64) is kept as sent. The result is only a
display name: api/uploads.py `display_name` makes it safe, and stored files get generated names.
"""

from __future__ import annotations

import binascii
import codecs
import re
import urllib.parse

# `; key=value` with a quoted or bare value; the header is at most MAX_PART_HEADER_BYTES long.
_PARAM = re.compile(r';\s*([^\s=;]+)\s*=\s*("(?:[^"\\]|\\.)*"?|[^;]*)')
_CONTINUATION = re.compile(r"filename\*(\d{1,3})(\*?)")
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
# Whitespace between two encoded words is not part of the text (RFC 2047 §6.2).
_BETWEEN_WORDS = re.compile(r"(\?=)\s+(=\?)")


def _unquoted(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        # The same unescaping python-multipart does: a Windows path's lone backslashes survive.
        return value[1:-1].replace("\\\\", "\\").replace('\\"', '"')
    return value


def _params(header: str) -> dict[str, str]:
    """The parameters by lower-case name (the first of a repeated one), values unquoted."""
    params: dict[str, str] = {}
    for match in _PARAM.finditer(header):
        params.setdefault(match.group(1).lower(), _unquoted(match.group(2)))
    return params


def _charset(name: str) -> str | None:
    """The codec of a text charset; None for an unknown name and for Python's non-text codecs
    (`rot13`, `base64`, `hex`, `zlib`: codecs.lookup finds them, but str.decode refuses them)."""
    try:
        info = codecs.lookup(name)
    except LookupError:
        return None
    return info.name if getattr(info, "_is_text_encoding", True) else None


def _extended(value: str) -> str | None:
    """An RFC 5987 `charset'language'percent-encoded` value, or None if it does not decode."""
    charset, quote, rest = value.partition("'")
    _, quote2, encoded = rest.partition("'")
    codec = _charset(charset) if quote and quote2 else None
    if codec is None:
        return None
    return urllib.parse.unquote_to_bytes(encoded).decode(codec, errors="replace")


def _continued(params: dict[str, str]) -> str | None:
    """RFC 2231 §3-4: `filename*0*=UTF-8''a%20; filename*1=b` joined, then decoded as one."""
    pieces: dict[int, tuple[str, bool]] = {}
    for key, value in params.items():
        match = _CONTINUATION.fullmatch(key)
        if match:
            pieces[int(match.group(1))] = (value, bool(match.group(2)))
    if 0 not in pieces:
        return None
    joined = bytearray()
    charset = "utf-8"
    for index in range(len(pieces)):
        if index not in pieces:
            break
        value, encoded = pieces[index]
        if encoded and index == 0:
            name, _, rest = value.partition("'")
            charset = _charset(name) or ""
            value = rest.partition("'")[2]
        joined += urllib.parse.unquote_to_bytes(value) if encoded else value.encode("utf-8")
    if not charset:
        return None
    return joined.decode(charset, errors="replace")


def _decoded_word(match: re.Match[str]) -> str:
    charset, encoding, text = match.groups()
    codec = _charset(charset.split("*", 1)[0])  # RFC 2231 §5 allows `charset*language`
    if codec is None:
        return match.group(0)
    try:
        if encoding in "bB":
            raw = binascii.a2b_base64(text + "=" * (-len(text) % 4), strict_mode=False)
        else:
            raw = binascii.a2b_qp(text, header=True)  # `_` is a space
    except binascii.Error:
        return match.group(0)
    return raw.decode(codec, errors="replace")


def decode_encoded_words(text: str) -> str:
    """RFC 2047 encoded words in `text` decoded; anything else left as it is."""
    if "=?" not in text:
        return text
    return _ENCODED_WORD.sub(_decoded_word, _BETWEEN_WORDS.sub(r"\1\2", text))


def parse_disposition(raw: bytes) -> tuple[str, str | None]:
    """The part's field name and its client file name (None when it sent no file name at all)."""
    # Part headers are bytes: UTF-8 from every current client; latin-1 keeps any other byte.
    try:
        header = raw.decode("utf-8")
    except UnicodeDecodeError:
        header = raw.decode("latin-1")
    params = _params(header)
    name = params.get("name", "")
    extended = params.get("filename*")
    filename = (_extended(extended) if extended is not None else None) or _continued(params)
    if filename is None and "filename" in params:
        filename = decode_encoded_words(params["filename"])
    if filename is None and (extended is not None or "filename*0" in params or "filename*0*" in params):
        filename = ""  # a file part whose name did not decode: still a file part
    return name, filename
