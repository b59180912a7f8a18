"""Metadata in the outputs: stripped by default, EXIF kept (without its orientation) on request."""

from __future__ import annotations

from pathlib import Path

from PIL import ExifTags, ImageCms

from core.processing.operations import OUTPUT_FORMATS
from tests import images
from tests.worker.rendering import assert_upright, load, processing, render_all, sideways_jpeg
from worker.imaging import EncoderSettings

SRGB_ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
MARKERS = [b"Jane Doe", b"CameraMaker", b"secret-xmp", b"secret-comment"]
EVERY_FORMAT = {fmt: [{"op": "format", "format": fmt}] for fmt in OUTPUT_FORMATS}


def metadata_jpeg(path: Path) -> Path:
    src = sideways_jpeg(
        path,
        (96, 64),
        exif=images.personal_exif(),
        xmp=images.XMP,
        comment=b"secret-comment",
        icc_profile=SRGB_ICC,
    )
    data = src.read_bytes()
    assert all(marker in data for marker in MARKERS)  # the input really carries them
    return src


def test_metadata_is_stripped_from_every_output(tmp_path: Path) -> None:
    src = metadata_jpeg(tmp_path / "in.jpg")
    chosen = processing(outputs={"same": "thumbnail", "grey": "grayscale", **EVERY_FORMAT})

    results = render_all(src, chosen, tmp_path)

    for (_, dst), output in zip(results, chosen.outputs, strict=True):
        written = dst.read_bytes()
        assert [marker for marker in MARKERS if marker in written] == [], output.name
        out = load(dst)
        assert len(out.getexif()) == 0, output.name
        assert not {"exif", "xmp", "XML:com.adobe.xmp", "comment"} & set(out.info), output.name
        assert_upright(out)
        if out.mode == "L":
            assert "icc_profile" not in out.info  # an RGB profile does not describe grey pixels
        else:
            assert out.info.get("icc_profile") == SRGB_ICC, output.name


def test_keep_metadata_keeps_exif_without_orientation(tmp_path: Path) -> None:
    src = metadata_jpeg(tmp_path / "in.jpg")
    chosen = processing(outputs={"same": "thumbnail", **EVERY_FORMAT})

    results = render_all(src, chosen, tmp_path, encoder=EncoderSettings(keep_metadata=True))

    for (_, dst), output in zip(results, chosen.outputs, strict=True):
        out = load(dst)
        exif = out.getexif()
        assert exif.get(ExifTags.Base.Artist) == "Jane Doe", output.name
        assert exif.get(ExifTags.Base.Make) == "CameraMaker", output.name
        assert exif.get_ifd(ExifTags.IFD.GPSInfo).get(ExifTags.GPS.GPSLatitudeRef) == "N", output.name
        assert ExifTags.Base.Orientation not in exif, output.name  # applied, so no viewer turns it again
        assert_upright(out)
        assert b"secret-xmp" not in dst.read_bytes() and b"secret-comment" not in dst.read_bytes()
        assert out.info.get("icc_profile") == SRGB_ICC, output.name
