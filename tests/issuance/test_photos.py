"""Photo checks and the card photo file, on real photographs (tests/fixtures/photos/SOURCES.md)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
from PIL import Image

from issuance import photos
from issuance.errors import PhotoRejected, ValidationError
from issuance.photos import PhotoProblem, ProcessedPhoto, process_photo
from yikatong.settings import PhotoSettings

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "photos"
SAMPLES = Path(__file__).resolve().parents[2] / "issuance" / "sample_data" / "photos"
SETTINGS = PhotoSettings()


def _load(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def _jpeg_markers(data: bytes) -> list[int]:
    """The JPEG segment markers before the scan (APPn, DQT, SOF, ...)."""
    assert data[:2] == b"\xff\xd8"
    markers, i = [], 2
    while i < len(data):
        assert data[i] == 0xFF, f"bad marker at {i}"
        marker = data[i + 1]
        markers.append(marker)
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            break
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        i += 2 + length
    return markers


def _assert_card_photo(p: ProcessedPhoto, source_format: str) -> Image.Image:
    assert (p.width, p.height) == (358, 441)
    assert SETTINGS.min_bytes <= len(p.jpeg) <= SETTINGS.max_bytes
    assert p.sha256 == hashlib.sha256(p.jpeg).hexdigest()
    assert p.source_format == source_format
    img = Image.open(io.BytesIO(p.jpeg))
    assert img.format == "JPEG" and img.mode == "RGB" and img.size == (358, 441)
    markers = _jpeg_markers(p.jpeg)
    assert 0xE1 not in markers, "EXIF/XMP (APP1) leaked"
    assert 0xE2 not in markers, "ICC profile (APP2) leaked"
    assert not img.getexif()
    left, top, right, bottom = p.face_box
    assert 0 <= left < right <= 358 and 0 <= top < bottom <= 441
    # the face is centred horizontally and in the upper half
    assert abs((left + right) / 2 - 179) < 20
    assert (top + bottom) / 2 < 441 * 0.5
    return img


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("astronaut.jpg", "JPEG"),
        ("astronaut_cmyk.jpg", "JPEG"),
        ("astronaut_grey16.png", "PNG"),
        ("astronaut_palette.png", "PNG"),
    ],
)
def test_good_photos_become_card_photos(name: str, fmt: str) -> None:
    _assert_card_photo(process_photo(_load(name), SETTINGS), fmt)


def test_sample_residents_photos_are_accepted() -> None:
    files = sorted(SAMPLES.glob("resident-*.jpg"))
    assert len(files) >= 5
    hashes = {process_photo(f.read_bytes(), SETTINGS).sha256 for f in files}
    assert len(hashes) == len(files)


def test_exif_rotated_photo_is_uprighted_and_metadata_dropped() -> None:
    data = _load("astronaut_exif_rotated.jpg")
    stored = Image.open(io.BytesIO(data))
    assert stored.getexif()[0x0112] == 6 and stored.width == 512
    p = process_photo(data, SETTINGS)
    img = _assert_card_photo(p, "JPEG")
    reference = Image.open(io.BytesIO(process_photo(_load("astronaut.jpg"), SETTINGS).jpeg))
    # upright: close to the card photo made from the upright original (sideways would not be)
    diff = _mean_abs_diff(img, reference)
    sideways = _mean_abs_diff(img, reference.transpose(Image.Transpose.ROTATE_90).resize(img.size))
    assert diff < 12 < sideways
    assert b"PhoneMaker" not in p.jpeg


def _mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    import numpy as np

    return float(
        np.mean(np.abs(np.asarray(a.convert("L"), float) - np.asarray(b.convert("L"), float)))
    )


def test_png_alpha_is_flattened_on_white() -> None:
    data = _load("astronaut_alpha.png")
    assert Image.open(io.BytesIO(data)).mode == "RGBA"
    _assert_card_photo(process_photo(data, SETTINGS), "PNG")
    rgba = Image.new("RGBA", (4, 4), (10, 200, 30, 0))
    flat = photos._to_srgb(rgba)
    assert flat.mode == "RGB" and flat.getpixel((0, 0)) == (255, 255, 255)


def test_icc_profile_and_exif_are_not_copied(tmp_path: Path) -> None:
    from PIL import ImageCms

    src = Image.open(FIXTURES / "astronaut.jpg")
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x010F] = "SecretCam"
    buf = io.BytesIO()
    src.save(buf, "JPEG", quality=92, icc_profile=icc, exif=exif.tobytes())
    p = process_photo(buf.getvalue(), SETTINGS)
    _assert_card_photo(p, "JPEG")
    assert b"SecretCam" not in p.jpeg


@pytest.mark.parametrize(
    ("name", "problem", "words"),
    [
        ("camera.png", PhotoProblem.NO_FACE, "no face"),
        ("two_faces.jpg", PhotoProblem.SEVERAL_FACES, "2 faces"),
        ("astronaut_tilted.jpg", PhotoProblem.NOT_FRONTAL, "tilted"),
        ("astronaut_small.jpg", PhotoProblem.FACE_TOO_SMALL, "pixels wide"),
        ("astronaut_blurred.jpg", PhotoProblem.BLURRED, "not sharp"),
        ("astronaut_dark.jpg", PhotoProblem.BACKGROUND_NOT_LIGHT, "too dark"),
        ("grace_hopper_reflected.jpg", PhotoProblem.BACKGROUND_NOT_LIGHT, "too dark"),
        ("grace_hopper_bright.jpg", PhotoProblem.BACKGROUND_NOT_PLAIN, "not plain"),
        ("astronaut_tight.jpg", PhotoProblem.BAD_FRAMING, "edge"),
        ("grace_hopper.jpg", PhotoProblem.BAD_FRAMING, "edge"),
        ("truncated.jpg", PhotoProblem.CORRUPT, "truncated"),
        ("not_an_image.jpg", PhotoProblem.NOT_AN_IMAGE, "not an image"),
        ("bomb.png", PhotoProblem.TOO_MANY_PIXELS, "too large"),
    ],
)
def test_bad_photos_get_their_specific_reason(name: str, problem: PhotoProblem, words: str) -> None:
    with pytest.raises(PhotoRejected) as info:
        process_photo(_load(name), SETTINGS)
    err = info.value
    assert isinstance(err, ValidationError) and err.code == "photo_rejected"
    assert err.details["reason"] == problem.value
    assert len(err.problems) == 1 and err.problems[0].field == "photo"
    assert words in err.problems[0].reason


def test_pixel_limit_comes_from_settings() -> None:
    tight = PhotoSettings(max_input_pixels=100_000)
    with pytest.raises(PhotoRejected) as info:
        process_photo(_load("astronaut.jpg"), tight)
    assert info.value.details["reason"] == PhotoProblem.TOO_MANY_PIXELS.value
    assert "262,144 pixels" in info.value.problems[0].reason


def test_empty_and_other_formats_are_refused() -> None:
    with pytest.raises(PhotoRejected) as info:
        process_photo(b"", SETTINGS)
    assert info.value.details["reason"] == PhotoProblem.EMPTY.value
    buf = io.BytesIO()
    Image.open(FIXTURES / "astronaut.jpg").save(buf, "GIF")
    with pytest.raises(PhotoRejected) as info:
        process_photo(buf.getvalue(), SETTINGS)
    assert info.value.details["reason"] == PhotoProblem.UNSUPPORTED_FORMAT.value
    assert "GIF" in info.value.problems[0].reason


def test_bilevel_image_is_refused() -> None:
    buf = io.BytesIO()
    Image.open(FIXTURES / "astronaut.jpg").convert("1").save(buf, "PNG")
    with pytest.raises(PhotoRejected) as info:
        process_photo(buf.getvalue(), SETTINGS)
    assert info.value.details["reason"] == PhotoProblem.UNSUPPORTED_MODE.value


def test_garbage_after_a_valid_header_is_a_reason_not_a_crash() -> None:
    data = bytearray(_load("astronaut.jpg"))
    for i in range(800, len(data), 97):  # corrupt the entropy-coded data
        data[i] = 0xFF if data[i] != 0xFF else 0x00
    try:
        process_photo(bytes(data), SETTINGS)
    except PhotoRejected as exc:
        assert exc.details["reason"] in {p.value for p in PhotoProblem}


def test_size_band_is_honoured_by_quality_search() -> None:
    img = Image.open(io.BytesIO(process_photo(_load("astronaut.jpg"), SETTINGS).jpeg))
    narrow = PhotoSettings(min_bytes=25_000, max_bytes=30_000)
    out = photos.encode_in_band(img, narrow)
    assert 25_000 <= len(out) <= 30_000
    # a nearly blank picture cannot reach 20 KB honestly: refused, never padded
    blank = Image.new("RGB", (358, 441), (250, 250, 250))
    with pytest.raises(PhotoRejected) as info:
        photos.encode_in_band(blank, SETTINGS)
    assert info.value.details["reason"] == PhotoProblem.TOO_LITTLE_DETAIL.value
    # a band too small for any quality: refused as too noisy
    with pytest.raises(PhotoRejected) as info:
        photos.encode_in_band(img, PhotoSettings(min_bytes=100, max_bytes=2_000))
    assert info.value.details["reason"] == PhotoProblem.TOO_NOISY.value


def test_large_phone_jpeg_is_cropped_from_a_fine_enough_decode() -> None:
    from bench.photos import phone_jpeg

    data = phone_jpeg()
    assert Image.open(io.BytesIO(data)).size == (4000, 3000)
    p = process_photo(data, SETTINGS)
    _assert_card_photo(p, "JPEG")
