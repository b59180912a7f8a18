"""Multipart as every client writes it: file names in each encoding (RFC 7578, 6266, 5987/2231,
2047), and the framing RFC 2046 allows (a preamble, transport padding), through the real API."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from api import uploads
from api.content_disposition import parse_disposition
from core.models import ImageTask
from core.storage import is_stored_name
from tests import images

IMAGE = images.jpeg(48, 32)


@pytest.mark.parametrize(
    ("disposition", "expected"),
    [
        (b'form-data; name="file"; filename="plain.jpg"', ("file", "plain.jpg")),
        ('form-data; name="file"; filename="фото.jpg"'.encode(), ("file", "фото.jpg")),  # raw UTF-8
        (b"form-data; name=\"file\"; filename*=UTF-8''na%C3%AFve.jpg", ("file", "naïve.jpg")),
        (
            b'form-data; name="file"; filename="naive.jpg"; filename*=utf-8\'\'na%C3%AFve.jpg',
            ("file", "naïve.jpg"),
        ),  # filename* wins (RFC 6266 §4.3), whichever comes first
        (
            b'form-data; name="file"; filename*=UTF-8\'\'na%C3%AFve.jpg; filename="naive.jpg"',
            ("file", "naïve.jpg"),
        ),
        (b"form-data; name=\"file\"; filename*=ISO-8859-1'fr'na%EFve.jpg", ("file", "naïve.jpg")),
        (
            b"form-data; name=\"file\"; filename*0*=UTF-8''na%C3%AF; filename*1=ve.jpg",
            ("file", "naïve.jpg"),
        ),  # RFC 2231 continuations
        (b'form-data; name=file; filename="=?utf-8?B?bmHDr3ZlLmpwZw==?="', ("file", "naïve.jpg")),  # .NET
        (b'form-data; name="file"; filename="=?UTF-8?Q?na=C3=AFve_photo.jpg?="', ("file", "naïve photo.jpg")),
        (
            b'form-data; name="file"; filename="=?UTF-8?Q?na=C3=AF?= =?UTF-8?Q?ve.jpg?="',
            ("file", "naïve.jpg"),
        ),  # the space between two encoded words is not text
        (b'form-data; name="file"; filename="=?x-nope?Q?a?=.jpg"', ("file", "=?x-nope?Q?a?=.jpg")),
        (
            b'form-data; name="file"; filename*=x-nope\'\'a.jpg; filename="fallback.jpg"',
            ("file", "fallback.jpg"),
        ),
        (b'form-data; name="file"; filename="a;b \\"c\\".jpg"', ("file", 'a;b "c".jpg')),
        # Python's non-text codecs are not charsets: the names are kept as sent.
        (b'form-data; name="file"; filename*=rot13\'\'abc.jpg; filename="a.jpg"', ("file", "a.jpg")),
        (b'form-data; name="file"; filename="=?base64?B?YWJj?="', ("file", "=?base64?B?YWJj?=")),
        (b'form-data; name="file"; filename*0*=hex\'\'616263; filename="b.jpg"', ("file", "b.jpg")),
        (b'form-data; name="note"', ("note", None)),
        (b"form-data; name=\"extra\"; filename*=UTF-8''x.jpg", ("extra", "x.jpg")),
    ],
)
def test_each_spelling_of_a_file_name_is_read(disposition: bytes, expected: tuple[str, str | None]) -> None:
    assert parse_disposition(disposition) == expected


def body_with(
    disposition: bytes, *, boundary: bytes = b"b0und", before: bytes = b"", padding: bytes = b""
) -> bytes:
    """A one-file form body written by hand: `before` the first delimiter, `padding` after each."""
    return (
        before
        + b"--" + boundary + padding + b"\r\n"
        + b"Content-Disposition: " + disposition + b"\r\nContent-Type: image/jpeg\r\n\r\n"
        + IMAGE
        + b"\r\n--" + boundary + b"--" + padding + b"\r\n"
    )  # fmt: skip


async def post_raw(client: httpx.AsyncClient, body: bytes, boundary: str = "b0und") -> httpx.Response:
    return await client.post(
        "/upload", content=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )


@pytest.mark.parametrize(
    ("disposition", "shown"),
    [
        (b'form-data; name="file"; filename="naive.jpg"; filename*=UTF-8\'\'na%C3%AFve.jpg', "naïve.jpg"),
        (b"form-data; name=\"file\"; filename*=iso-8859-1''na%EFve.jpg", "naïve.jpg"),
        (b'form-data; name=file; filename="=?utf-8?B?0YTQvtGC0L4uanBn?="', "фото.jpg"),
        (b'form-data; name="file"; filename="=?UTF-8?Q?na=C3=AFve.jpg?="', "naïve.jpg"),
        # A decoded name is a display name like any other: no path survives it.
        (b"form-data; name=\"file\"; filename*=UTF-8''..%2F..%2Fetc%2Fpasswd.jpg", "passwd.jpg"),
        (b'form-data; name="file"; filename="=?UTF-8?B?Li4vLi4vZXRjL3Bhc3N3ZC5qcGc=?="', "passwd.jpg"),
    ],
)
async def test_the_decoded_file_name_is_shown_and_the_stored_name_is_ours(
    client: httpx.AsyncClient, db: AsyncSession, uploads_dir: Path, disposition: bytes, shown: str
) -> None:
    response = await post_raw(client, body_with(disposition))

    assert response.status_code == 200, response.text
    assert response.json()["filename"] == shown
    task = await db.get(ImageTask, response.json()["task_id"])
    assert task is not None and task.filename == shown
    assert is_stored_name(task.input_name) and (uploads_dir / task.input_name).is_file()


FILE_PART = b'form-data; name="file"; filename="framed.jpg"'


@pytest.mark.parametrize(
    ("before", "padding"),
    [
        (b"This is a preamble, which a MIME reader ignores.\r\n", b""),
        (b"MIME-Version: 1.0\r\n\r\nlooks like headers\r\n", b""),  # what email.mime writes
        (b"\r\n", b""),  # an empty preamble
        (b"", b"  \t "),  # padding after every delimiter, the first included
        (b"preamble\r\n", b" "),
    ],
)
async def test_a_preamble_and_transport_padding_are_accepted(
    client: httpx.AsyncClient, before: bytes, padding: bytes
) -> None:
    response = await post_raw(client, body_with(FILE_PART, before=before, padding=padding))

    assert response.status_code == 200, response.text
    assert response.json()["filename"] == "framed.jpg"


async def test_a_body_without_its_delimiter_is_malformed(client: httpx.AsyncClient) -> None:
    response = await post_raw(client, b"preamble\r\n" + body_with(FILE_PART, boundary=b"another"))

    assert response.status_code == 422
    assert response.json() == {"detail": uploads.MALFORMED}


async def test_the_search_for_the_first_delimiter_is_bounded() -> None:
    """A body that never shows its first delimiter is refused once MAX_PREAMBLE_BYTES are read."""
    asked_after_the_bound = False

    async def endless_preamble() -> AsyncIterator[bytes]:
        nonlocal asked_after_the_bound
        yield b"x" * (uploads.MAX_PREAMBLE_BYTES + 1)
        asked_after_the_bound = True
        yield body_with(FILE_PART)

    with pytest.raises(uploads.UploadRefused) as refused:
        await uploads._stream_to(endless_preamble(), b"b0und", io.BytesIO(), max_file_bytes=10**6)

    assert (refused.value.status_code, refused.value.message) == (422, uploads.MALFORMED)
    assert not asked_after_the_bound


async def test_a_delimiter_followed_by_text_is_still_malformed(client: httpx.AsyncClient) -> None:
    body = body_with(FILE_PART).replace(b"--b0und\r\n", b"--b0und junk\r\n", 1)

    response = await post_raw(client, body)

    assert response.status_code == 422
    assert response.json() == {"detail": uploads.MALFORMED}


async def one_byte_at_a_time(body: bytes) -> AsyncIterator[bytes]:
    for index in range(len(body)):
        yield body[index : index + 1]


@pytest.mark.parametrize("before", [b"", b"\r\n", b"a preamble\r\n"])
async def test_the_first_delimiter_is_found_whatever_the_chunks(before: bytes) -> None:
    """The receiver itself (python-multipart underneath), fed one byte per chunk."""
    target = io.BytesIO()
    body = body_with(FILE_PART, before=before, padding=b" \t")

    received = await uploads._stream_to(one_byte_at_a_time(body), b"b0und", target, max_file_bytes=10**6)

    assert received.ended and received.files_seen == 1
    assert received.raw_filename == "framed.jpg"
    assert target.getvalue() == IMAGE
