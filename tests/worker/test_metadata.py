"""Metadata in the outputs: stripped by default, EXIF kept (without its orientation) on request."""

from __future__ import annotations

from pathlib import Path

from PIL import ExifTags, Image, ImageCms

from core.processing.operations import OUTPUT_FORMATS
from tests import images
from tests.worker.rendering import assert_upright, load, processing, render_all, sideways_jpeg
from worker.imaging import MAX_ICC_PROFILE_BYTES, EncoderSettings

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


def test_an_oversized_icc_profile_is_applied_not_copied(tmp_path: Path) -> None:
    # 12 MB of profile on a 640×480 photo: copied whole, every output (a thumbnail too) was 12 MB.
    # This one swaps red and blue: a red picture is blue in the colours it describes.
    profile = images.icc_profile(12_000_000, swap_red_and_blue=True)
    assert len(profile) > MAX_ICC_PROFILE_BYTES
    src = tmp_path / "in.jpg"
    Image.new("RGB", (640, 480), (255, 0, 0)).save(src, icc_profile=profile, quality=95)
    assert src.stat().st_size > 12_000_000
    chosen = processing(outputs={"thumb": "thumbnail", "png": [{"op": "format", "format": "png"}]})

    for result, dst in render_all(src, chosen, tmp_path):
        out = load(dst)
        assert result.size_bytes < 50_000, "the profile is not repeated in the output"
        assert "icc_profile" not in out.info, "sRGB, as viewers assume without a profile"
        red, green, blue = out.convert("RGB").getpixel((out.width // 2, out.height // 2))  # type: ignore[misc]
        assert blue > 200 and red < 60 and green < 60, "the colours the profile describes"


def test_an_oversized_icc_profile_that_cannot_be_read_is_dropped(tmp_path: Path) -> None:
    damaged = SRGB_ICC[:128] + bytes(2_000_000)
    src = tmp_path / "in.jpg"
    Image.new("RGB", (64, 48), (255, 0, 0)).save(src, icc_profile=damaged)

    ((result, dst),) = render_all(src, processing(preset="thumbnail"), tmp_path)

    assert result.size_bytes < 20_000
    assert "icc_profile" not in load(dst).info


def test_an_icc_profile_up_to_the_limit_is_still_copied(tmp_path: Path) -> None:
    profile = images.icc_profile(MAX_ICC_PROFILE_BYTES - 1000)
    assert len(profile) <= MAX_ICC_PROFILE_BYTES
    src = tmp_path / "in.png"
    Image.new("RGB", (64, 48), (255, 0, 0)).save(src, icc_profile=profile)

    ((_, dst),) = render_all(src, processing(preset="thumbnail"), tmp_path)

    assert load(dst).info.get("icc_profile") == profile
