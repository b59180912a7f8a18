"""has_image_signature, the first look a direct upload's completion takes (a ranged GET of
SIGNATURE_BYTES): every file the probe accepts must pass it, or a good image would be refused."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from core.formats import SIGNATURE_BYTES, has_image_signature, probe_image
from tests import images, input_formats


def samples() -> dict[str, bytes]:
    photo = images.photo(64, 48)
    return {
        "JPEG": images.jpeg(64, 48),
        "progressive JPEG": images.encode(photo, "JPEG", progressive=True),
        "PNG": images.png(),
        "GIF": images.encode(photo.convert("P"), "GIF"),
        "WEBP": images.encode(photo, "WEBP"),
        "BMP": images.encode(photo, "BMP"),
        "TIFF": input_formats.tiff(photo),
        "AVIF": input_formats.avif(photo),
        "HEIC": input_formats.heic(photo),
    }


@pytest.mark.parametrize("name", list(samples()))
def test_every_accepted_format_passes_the_sniff(name: str, tmp_path: Path) -> None:
    data = samples()[name]
    path = tmp_path / "sample"
    path.write_bytes(data)
    probe_image(path, max_pixels=10_000_000, max_frames=10)  # the probe takes it...

    assert has_image_signature(data[:SIGNATURE_BYTES])  # ...so the sniff must let it through


@pytest.mark.parametrize(
    "data",
    [b"", b"<html><body>", b"%PDF-1.7\n", b"<?xml version='1.0'?><svg", b"\0\0\1\0\1\0", b"PK\3\4"],
)
def test_what_no_accepted_format_starts_with_is_refused(data: bytes) -> None:
    assert not has_image_signature(data[:SIGNATURE_BYTES])


def test_an_ico_is_refused_by_the_sniff() -> None:
    out = io.BytesIO()
    Image.new("RGB", (16, 16)).save(out, "ICO")

    assert not has_image_signature(out.getvalue()[:SIGNATURE_BYTES])
