"""The tus 1.0.0 protocol's headers: what the server announces, and reading what clients send.

Extensions served (api/routes/resumable.py): `creation`, `termination`, `expiration` and
`checksum`. Not `creation-defer-length` (an image's size is known before it is sent),
`creation-with-upload` or `concatenation`. Every refusal is a clear 4xx with a message, as JSON.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

from api.uploads import MAX_PARTS, MAX_TEXT_FIELD_BYTES

TUS_VERSION = "1.0.0"
# Where the tus endpoint is served (api/routes/resumable.py): its answers all carry Tus-Resumable.
TUS_PATH = "/files/"
EXTENSIONS = "creation,termination,expiration,checksum"
OFFSET_CONTENT_TYPE = "application/offset+octet-stream"
# Upload-Checksum algorithms, as named in the header (the IANA hash names tus refers to).
CHECKSUMS: dict[str, Callable[[], Any]] = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "md5": hashlib.md5}
TASK_ID_HEADER = "Imagequeue-Task-Id"
# The longest number a length or offset header may carry (more than any file: 10^19 bytes).
_MAX_DIGITS = 19
_METADATA_KEY = re.compile(r"[!-+\--~]+")  # printable ASCII but space and comma

VERSION_UNSUPPORTED = "This server speaks tus 1.0.0: send `Tus-Resumable: 1.0.0`."
BAD_NUMBER = "{header} must be a whole number of bytes."
BAD_METADATA = (
    "Upload-Metadata must be comma-separated `key base64value` pairs, each key once, at most "
    f"{MAX_PARTS} of them, each value at most {MAX_TEXT_FIELD_BYTES} bytes of UTF-8 text (no NUL)."
)
BAD_CHECKSUM = "Upload-Checksum must be `<algorithm> <base64 digest>`, the algorithm one of {algorithms}."


class TusRefused(Exception):
    """A request the protocol refuses; `status_code` and `message` are what the client sees."""

    def __init__(self, status_code: int, message: str, **headers: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        # Further headers the answer carries (a 405's Allow).
        self.headers = headers


def tus_headers(**extra: str) -> dict[str, str]:
    """Tus-Resumable, which every answer carries, and `extra` (underscores read as dashes)."""
    return {"Tus-Resumable": TUS_VERSION, **{name.replace("_", "-"): value for name, value in extra.items()}}


def capabilities(max_size: int) -> dict[str, str]:
    """What OPTIONS announces."""
    return tus_headers(
        Tus_Version=TUS_VERSION,
        Tus_Extension=EXTENSIONS,
        Tus_Max_Size=str(max_size),
        Tus_Checksum_Algorithm=",".join(CHECKSUMS),
    )


def check_version(value: str | None) -> None:
    if value != TUS_VERSION:
        raise TusRefused(412, VERSION_UNSUPPORTED)


def byte_count(header: str, value: str | None) -> int:
    if value is None or not value.isascii() or not value.isdigit() or len(value) > _MAX_DIGITS:
        raise TusRefused(400, BAD_NUMBER.format(header=header))
    return int(value)


def parse_metadata(value: str | None) -> dict[str, str]:
    """Upload-Metadata decoded: key -> UTF-8 text (an empty string for a key given without value)."""
    fields: dict[str, str] = {}
    if value is None or not value.strip():
        return fields
    pairs = value.split(",")
    if len(pairs) > MAX_PARTS:
        raise TusRefused(400, BAD_METADATA)
    for pair in pairs:
        parts = pair.strip().split(" ")
        if len(parts) > 2 or not _METADATA_KEY.fullmatch(parts[0]) or parts[0] in fields:
            raise TusRefused(400, BAD_METADATA)
        encoded = parts[1] if len(parts) == 2 else ""
        if len(encoded) > (MAX_TEXT_FIELD_BYTES * 4) // 3 + 4:
            raise TusRefused(400, BAD_METADATA)
        try:
            text = base64.b64decode(encoded, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise TusRefused(400, BAD_METADATA) from None
        if "\x00" in text:  # no text field holds one, and PostgreSQL's JSONB cannot store it
            raise TusRefused(400, BAD_METADATA)
        fields[parts[0]] = text
    return fields


def parse_checksum(value: str | None) -> tuple[Any, bytes] | None:
    """Upload-Checksum as (a fresh hash object of its algorithm, the expected digest); None if absent."""
    if value is None:
        return None
    algorithm, _, encoded = value.strip().partition(" ")
    refusal = TusRefused(400, BAD_CHECKSUM.format(algorithms=", ".join(CHECKSUMS)))
    if algorithm not in CHECKSUMS:
        raise refusal
    try:
        expected = base64.b64decode(encoded.strip(), validate=True)
    except binascii.Error:
        raise refusal from None
    digest = CHECKSUMS[algorithm]()
    if len(expected) != digest.digest_size:
        raise refusal
    return digest, expected


def http_date(moment: datetime) -> str:
    """RFC 9110's (RFC 7231's) IMF-fixdate, as Upload-Expires wants it."""
    return format_datetime(moment.astimezone(UTC), usegmt=True)
