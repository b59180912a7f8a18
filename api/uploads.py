"""Receiving an upload: stream the multipart body to disk under a generated name, within limits.

Starlette's form parser caps neither the body nor file parts, so `/upload` reads the raw body
itself and feeds python-multipart's streaming parser: memory stays at one chunk whatever the size,
and the byte limit is enforced on the raw body before (Content-Length) and while it is read. Once
the limit is passed the request is answered 413 at once; the rest of the body is never read.

The format is identified from the bytes (Pillow reads the header only), never from the client's
file name or declared content type. The client's file name (in whichever of its encodings:
api/content_disposition.py) is kept as a display name only.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import unicodedata
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import anyio.to_thread
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from api.content_disposition import parse_disposition
from core.formats import ImageInfo, ImageRejected, UnsupportedImage, probe_image
from core.image_structure import QuickProbeSpent
from core.storage import STORAGE_UNAVAILABLE, Folders, StorageUnavailable, remove_quietly, sync_path

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

FILE_FIELD = "file"
# Instead of `file`: a URL the API fetches the image from (api/url_import.py), when URL_IMPORT is on.
URL_FIELD = "url"
# Room for the multipart framing, part headers and a few small text fields around the file.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
MAX_TEXT_FIELD_BYTES = 8 * 1024
MAX_PARTS = 16
MAX_PART_HEADER_BYTES = 8 * 1024
DISPLAY_NAME_MAX_CHARS = 255
# The largest file identified on the event loop (see identify).
PROBE_ON_LOOP_MAX_BYTES = 512 * 1024
# How much of the body is read looking for its first boundary line (past a preamble and padding).
MAX_PREAMBLE_BYTES = 16 * 1024

NOT_MULTIPART = "Send the image as multipart/form-data in a field named 'file'."
MISSING_FILE = "No file received: send the image in a multipart/form-data field named 'file'."
WRONG_FIELD = "Unexpected file field {name!r}: send the image in the field named 'file'."
TWO_FILES = "Send exactly one file per upload in the field 'file'."
TOO_MANY_PARTS = f"Too many form fields: at most {MAX_PARTS} are accepted."
FIELD_TOO_LARGE = f"A form field is over {MAX_TEXT_FIELD_BYTES} bytes."
MALFORMED = "The multipart body is malformed."
HEADERS_TOO_LARGE = f"A form part's headers are over {MAX_PART_HEADER_BYTES} bytes."
EMPTY_FILE = "The uploaded file is empty."
TOO_LARGE = "The upload is larger than the limit of {limit:,} bytes."
URL_IMPORT_OFF = "This server does not import images by URL (its URL_IMPORT setting is off); send the file."
FILE_AND_URL = "Send the image either as a file in 'file' or as a URL in 'url', not both."
STORAGE_FAILED = "The server could not store the upload; nothing was kept. Please try again shortly."


class UploadRefused(Exception):
    """The request cannot become a task; `status_code` and `message` are what the client sees."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


@contextlib.contextmanager
def storage_refusals(temp: Path | None = None) -> Iterator[None]:
    """The file store's faults while keeping an upload, as the client's 503 (nothing was kept):
    the disk failing or full, or the backend out of reach. `temp`: a temporary file to remove then."""
    try:
        yield
    except (OSError, StorageUnavailable) as exc:
        if temp is not None:
            remove_quietly(temp)
        message = STORAGE_UNAVAILABLE if isinstance(exc, StorageUnavailable) else STORAGE_FAILED
        raise UploadRefused(503, message) from exc


@dataclass
class ReceivedUpload:
    """A complete, identified image in a temporary file of UPLOADS_DIR; the caller names it."""

    temp_path: Path
    display_name: str
    size_bytes: int
    sha256: str
    info: ImageInfo
    # The form's other fields (preset, ops, outputs, ...), by name; not yet validated.
    text_fields: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class FetchedFile:
    """What a URL import wrote into the upload's temporary file."""

    raw_filename: str | None
    size_bytes: int
    sha256: str


# Writes the image at a URL into the open temporary file; raises UploadRefused when it cannot.
UrlFetcher = Callable[[str, BinaryIO], Awaitable[FetchedFile]]


def display_name(raw: str | None) -> str:
    """The client's file name made safe to store and show: last path segment, printable, bounded."""
    name = unicodedata.normalize("NFC", raw or "")
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip()
    if name in ("", ".", ".."):
        return "upload"
    return name[:DISPLAY_NAME_MAX_CHARS]


@dataclass
class _MultipartReceiver:
    """python-multipart callbacks that write the `file` part to `target` and refuse the rest."""

    target: BinaryIO
    max_file_bytes: int
    file_bytes: int = 0
    files_seen: int = 0
    parts_seen: int = 0
    raw_filename: str | None = None
    digest: Any = field(default_factory=hashlib.sha256)  # hashlib's hash type is private before 3.12
    _header_field: bytearray = field(default_factory=bytearray)
    _header_value: bytearray = field(default_factory=bytearray)
    _headers: dict[str, bytes] = field(default_factory=dict)
    _writing_file: bool = False
    _text_bytes: int = 0
    _text_name: str | None = None
    _text: bytearray = field(default_factory=bytearray)
    # The form's text fields (UTF-8), by name; a repeated name keeps its first value.
    text_fields: dict[str, str] = field(default_factory=dict)
    ended: bool = False
    _header_bytes: int = 0

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": lambda data, start, end: self._add_header(self._header_field, data[start:end]),
            "on_header_value": lambda data, start, end: self._add_header(self._header_value, data[start:end]),
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_end": self.on_end,
        }

    def on_end(self) -> None:
        self._end_text_field()
        self.ended = True

    def _end_text_field(self) -> None:
        if self._text_name is not None:
            value = self._text.decode("utf-8", errors="replace")
            self.text_fields.setdefault(self._text_name, value)
        self._text_name = None
        self._text.clear()

    def _add_header(self, buffer: bytearray, data: bytes) -> None:
        self._header_bytes += len(data)
        if self._header_bytes > MAX_PART_HEADER_BYTES:
            raise UploadRefused(422, HEADERS_TOO_LARGE)
        buffer.extend(data)

    def on_part_begin(self) -> None:
        self._end_text_field()
        self.parts_seen += 1
        if self.parts_seen > MAX_PARTS:
            raise UploadRefused(422, TOO_MANY_PARTS)
        self._headers = {}
        self._writing_file = False
        self._text_bytes = 0
        self._header_bytes = 0

    def on_header_end(self) -> None:
        self._headers[self._header_field.decode("latin-1").lower()] = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def on_headers_finished(self) -> None:
        name, filename = parse_disposition(self._headers.get("content-disposition", b""))
        if name == FILE_FIELD:
            self.files_seen += 1
            if self.files_seen > 1:
                raise UploadRefused(422, TWO_FILES)
            self._writing_file = True
            self.raw_filename = filename
        elif filename is not None:
            raise UploadRefused(422, WRONG_FIELD.format(name=name[:100]))
        else:
            self._text_name = name

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if not self._writing_file:
            # Text fields are kept in memory, so each is bounded (and MAX_PARTS bounds their number).
            self._text_bytes += end - start
            if self._text_bytes > MAX_TEXT_FIELD_BYTES:
                raise UploadRefused(413, FIELD_TOO_LARGE)
            self._text.extend(data[start:end])
            return
        self.file_bytes += end - start
        if self.file_bytes > self.max_file_bytes:
            raise UploadRefused(413, TOO_LARGE.format(limit=self.max_file_bytes))
        chunk = data[start:end]
        self.digest.update(chunk)
        self.target.write(chunk)


def _boundary(request: Request) -> bytes:
    content_type, params = parse_options_header(request.headers.get("content-type"))
    boundary = params.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise UploadRefused(422, NOT_MULTIPART)
    return boundary


def _check_declared_length(request: Request, limit: int, max_file_bytes: int) -> None:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise UploadRefused(413, TOO_LARGE.format(limit=max_file_bytes))


def _from_first_delimiter(head: bytes | bytearray, boundary: bytes) -> bytes | None:
    """The body from its first delimiter line on, in the form python-multipart accepts; None if more
    of the body is needed to tell.

    RFC 2046 §5.1.1 allows a preamble before the first delimiter line (which then begins after a
    CRLF) and transport padding (spaces, tabs) between a delimiter and its CRLF. python-multipart
    0.0.x refuses both at the start of the body (it skips only leading CRs and LFs, and accepts
    padding only after later delimiters), so both are removed here, once per upload; the chunks
    after the first go to the parser untouched.
    """
    delimiter = b"--" + boundary
    if head.startswith(delimiter):
        at = 0
    else:
        found = head.find(b"\r\n" + delimiter)
        if found == -1:
            return None
        at = found + 2
    after = at + len(delimiter)
    rest = head[after:].lstrip(b" \t")
    if rest.startswith(b"\r\n"):
        return delimiter + rest
    if rest in (b"", b"\r"):
        return None
    return bytes(head[at:])  # `--` (an empty form), or not a delimiter line: the parser judges it


async def _stream_to(
    chunks: AsyncIterator[bytes], boundary: bytes, target: BinaryIO, max_file_bytes: int
) -> _MultipartReceiver:
    raw_limit = max_file_bytes + MULTIPART_OVERHEAD_BYTES
    receiver = _MultipartReceiver(target=target, max_file_bytes=max_file_bytes)
    parser = MultipartParser(boundary, receiver.callbacks())
    received = 0
    # The body's start, until its first delimiter line is found (see _from_first_delimiter).
    head: bytearray | None = bytearray()
    first_line = b"--" + boundary + b"\r\n"
    async for chunk in chunks:
        received += len(chunk)
        if received > raw_limit:
            raise UploadRefused(413, TOO_LARGE.format(limit=max_file_bytes))
        if head is not None:
            if not head and chunk.startswith(first_line):  # what nearly every client sends
                head = None
            else:
                head += chunk
                start = _from_first_delimiter(head, boundary)
                if start is None:
                    if len(head) > MAX_PREAMBLE_BYTES:
                        raise UploadRefused(422, MALFORMED)
                    continue
                chunk, head = start, None
        try:
            parser.write(chunk)
        # A failed write of the file part (ENOSPC, EDQUOT) is the server's, not a malformed body:
        # `_receive` answers it 503.
        except (UploadRefused, OSError):
            raise
        except Exception:
            raise UploadRefused(422, MALFORMED) from None
    # python-multipart's finalize() checks nothing: a body cut before its closing boundary is
    # recognised by the end callback never having fired.
    if not receiver.ended:
        raise UploadRefused(422, MALFORMED)
    return receiver


async def identify(
    temp_path: Path, size_bytes: int, *, max_pixels: int, max_frames: int, handle: BinaryIO | None = None
) -> ImageInfo:
    """Identify a complete temporary file from its bytes (just written, so read from the page
    cache). Raises UnsupportedImage, ImageRejected or OSError.

    On the event loop when that is cheap: the probe is Python holding the GIL, so a thread would not
    run it beside the loop anyway, and a hop costs the API more than an ordinary probe (BENCHMARKS.md,
    "One thread puts uploads in place"). Cheap means a file of at most PROBE_ON_LOOP_MAX_BYTES (a
    progressive JPEG's scans are walked byte by byte) whose probe passes within QUICK_PROBE_READS
    reads (a file of many small parts does not). Otherwise in a thread, where the loop gets the GIL
    back every switch interval, and where the file is synced too (`handle`: the file, still open
    for writing; so closing it on the loop flushes nothing, where a network filesystem would send
    its pages then).
    On the loop it is not synced: the file store makes it durable when it keeps it
    (Storage.keep_upload), so a refused upload costs no disk sync."""
    if size_bytes <= PROBE_ON_LOOP_MAX_BYTES:
        try:
            return probe_image(temp_path, max_pixels=max_pixels, max_frames=max_frames, quick=True)
        except QuickProbeSpent:
            pass
    return await anyio.to_thread.run_sync(_sync_and_probe, temp_path, handle, max_pixels, max_frames)


def _sync_and_probe(temp_path: Path, handle: BinaryIO | None, max_pixels: int, max_frames: int) -> ImageInfo:
    """In a thread: sync the file here (the store's sync then finds nothing to write; a large file
    would otherwise hold up the small ones synced in the same batch, core/storage/group_sync.py),
    then identify it."""
    if handle is not None:
        os.fsync(handle.fileno())
    else:
        sync_path(temp_path)
    return probe_image(temp_path, max_pixels=max_pixels, max_frames=max_frames)


async def identify_file(temp_path: Path, size_bytes: int, *, max_pixels: int, max_frames: int) -> ImageInfo:
    """Identify a complete temporary file joined from elsewhere (a resumable upload's pieces), with
    the answers `_receive` gives; the file is removed when it is refused."""
    try:
        return await identify(temp_path, size_bytes, max_pixels=max_pixels, max_frames=max_frames)
    except UnsupportedImage as exc:
        remove_quietly(temp_path)
        raise UploadRefused(415, str(exc)) from None
    except ImageRejected as exc:
        remove_quietly(temp_path)
        raise UploadRefused(422, str(exc)) from None
    except OSError as exc:
        remove_quietly(temp_path)
        raise UploadRefused(503, STORAGE_FAILED) from exc


def upload_boundary(request: Request, max_file_bytes: int) -> bytes:
    """The checks of an upload's headers alone, before a byte of its body is read (a client that
    sent `Expect: 100-continue` is then never asked for the body): its multipart boundary, or
    UploadRefused (413 for a declared length over the limit, 422 for a body that is not
    multipart/form-data)."""
    _check_declared_length(request, max_file_bytes + MULTIPART_OVERHEAD_BYTES, max_file_bytes)
    return _boundary(request)


async def receive_upload(
    request: Request,
    boundary: bytes,
    *,
    folders: Folders,
    max_file_bytes: int,
    max_pixels: int,
    max_frames: int,
    fetch_url: UrlFetcher | None = None,
) -> ReceivedUpload:
    """Stream the request's `file` part (or, with `fetch_url`, the image its `url` field names) into
    a temporary file and identify it; `boundary` is `upload_boundary`'s, the headers checked.

    Raises UploadRefused (nothing left on disk) for anything that cannot become a task. A refusal
    may come with the body partly or wholly unread: the answer goes out at once, and the HTTP
    layer's lingering close (api.http_limits) lets the client read it while what it still sends
    is dropped, within bounds.
    """
    return await _receive(
        request.stream(), boundary, folders, max_file_bytes, max_pixels, max_frames, fetch_url
    )


async def _receive(
    chunks: AsyncIterator[bytes],
    boundary: bytes,
    folders: Folders,
    max_file_bytes: int,
    max_pixels: int,
    max_frames: int,
    fetch_url: UrlFetcher | None,
) -> ReceivedUpload:
    temp_path = folders.temp_upload_path()
    try:
        # Plain blocking writes of one chunk at a time: page-cache writes cost microseconds, less
        # than handing each chunk to a thread would.
        with open(temp_path, "wb") as target:  # noqa: ASYNC230
            receiver = await _stream_to(chunks, boundary, target, max_file_bytes)
            url = receiver.text_fields.get(URL_FIELD)
            if receiver.files_seen == 0 and url is not None:
                if fetch_url is None:
                    raise UploadRefused(422, URL_IMPORT_OFF)
                fetched = await fetch_url(url, target)
            else:
                if receiver.files_seen == 0:
                    raise UploadRefused(422, MISSING_FILE)
                if url is not None and fetch_url is not None:  # off, `url` is just another field
                    raise UploadRefused(422, FILE_AND_URL)
                if receiver.file_bytes == 0:
                    raise UploadRefused(400, EMPTY_FILE)
                fetched = FetchedFile(receiver.raw_filename, receiver.file_bytes, receiver.digest.hexdigest())
            target.flush()
            info = await identify(
                temp_path, fetched.size_bytes, max_pixels=max_pixels, max_frames=max_frames, handle=target
            )
    except UnsupportedImage as exc:
        remove_quietly(temp_path)
        raise UploadRefused(415, str(exc)) from None
    except ImageRejected as exc:  # too many pixels or frames, or too costly to identify
        remove_quietly(temp_path)
        raise UploadRefused(422, str(exc)) from None
    except OSError as exc:  # disk full, permissions: not the client's fault, and not a 500 either
        remove_quietly(temp_path)
        raise UploadRefused(503, STORAGE_FAILED) from exc
    except BaseException:
        remove_quietly(temp_path)
        raise
    return ReceivedUpload(
        temp_path=temp_path,
        display_name=display_name(fetched.raw_filename),
        size_bytes=fetched.size_bytes,
        sha256=fetched.sha256,
        info=info,
        text_fields=receiver.text_fields,
    )
