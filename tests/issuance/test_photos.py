"""Photo checks and the card photo file, on real photographs (tests/fixtures/photos/SOURCES.md)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
from PIL import Image

from issuance import photo_files, photos
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


def test_transparency_outside_the_crop_is_accepted_inside_refused() -> None:
    data = _load("astronaut_alpha.png")
    assert Image.open(io.BytesIO(data)).mode == "RGBA"
    _assert_card_photo(process_photo(data, SETTINGS), "PNG")
    rgba = Image.new("RGBA", (4, 4), (10, 200, 30, 0))
    flat, alpha = photo_files.to_srgb(rgba)
    assert flat.mode == "RGB" and flat.getpixel((0, 0)) == (255, 255, 255)
    assert alpha is not None and alpha.getextrema() == (0, 0)
    # the whole picture at alpha 128: refused, never flattened into a faded card photo
    faded = Image.open(FIXTURES / "astronaut.jpg").convert("RGBA")
    faded.putalpha(128)
    buf = io.BytesIO()
    faded.save(buf, "PNG")
    with pytest.raises(PhotoRejected) as info:
        process_photo(buf.getvalue(), SETTINGS)
    assert info.value.details["reason"] == PhotoProblem.TRANSPARENT.value
    assert info.value.problems[0].code == "transparent"


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
        ("astronaut_small.jpg", PhotoProblem.IMAGE_TOO_SMALL, "at least 179x221"),
        ("astronaut_blurred.jpg", PhotoProblem.BLURRED, "not sharp"),
        ("astronaut_dark.jpg", PhotoProblem.BACKGROUND_NOT_LIGHT, "too dark"),
        ("grace_hopper_reflected.jpg", PhotoProblem.BACKGROUND_NOT_LIGHT, "too dark"),
        ("grace_hopper_bright.jpg", PhotoProblem.BACKGROUND_NOT_PLAIN, "not plain"),
        ("astronaut_tight.jpg", PhotoProblem.IMAGE_TOO_SMALL, "150x160 pixels"),
        ("grace_hopper.jpg", PhotoProblem.BAD_FRAMING, "edge"),
        ("truncated.jpg", PhotoProblem.CORRUPT, "truncated"),
        ("not_an_image.jpg", PhotoProblem.NOT_AN_IMAGE, "not an image"),
        ("bomb.png", PhotoProblem.TOO_MANY_PIXELS, "more than the 50,000,000 allowed"),
    ],
)
def test_bad_photos_get_their_specific_reason(name: str, problem: PhotoProblem, words: str) -> None:
    with pytest.raises(PhotoRejected) as info:
        process_photo(_load(name), SETTINGS)
    err = info.value
    assert isinstance(err, ValidationError) and err.code == "photo_rejected"
    assert err.details["reason"] == problem.value
    assert len(err.problems) == 1 and err.problems[0].field == "photo"
    assert err.problems[0].code == problem.value
    assert words in err.problems[0].reason
    # said once: "photo rejected: <reason>", not the reason again after it
    assert str(err) == f"photo rejected: {err.problems[0].reason}"


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


def test_pixel_limit_is_the_projects_in_both_directions() -> None:
    """Read from the header before decoding; Pillow's own bomb limit plays no part."""
    from tests.fixtures.photos.corpus import jpeg_header, png_header

    pillow_limit = 2 * Image.MAX_IMAGE_PIXELS  # Pillow refuses above this at Image.open
    big = png_header(14_000, 13_000)  # 182,000,000 pixels: over Pillow's limit
    assert pillow_limit < 14_000 * 13_000
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(big))
    roomy = PhotoSettings(max_input_pixels=200_000_000)
    header = photo_files.open_picture(big)  # the decoder itself: no Pillow bomb check
    assert photos._check_size(header, 1, roomy) == (14_000, 13_000)
    with pytest.raises(PhotoRejected) as info:
        process_photo(jpeg_header(10_000, 9_000), PhotoSettings(max_input_pixels=89_000_000))
    assert info.value.details["reason"] == "too_many_pixels"
    assert "90,000,000 pixels, more than the 89,000,000 allowed" in info.value.problems[0].reason


@pytest.mark.parametrize("orientation", range(1, 9))
def test_stored_box_maps_an_upright_box_back(orientation: int) -> None:
    import numpy as np

    rng = np.random.default_rng(orientation)
    img = Image.fromarray(rng.integers(0, 255, (37, 53, 3), dtype=np.uint8))
    upright = photo_files.upright(img, orientation)
    for _ in range(20):
        x0, x1 = sorted(int(v) for v in rng.integers(0, upright.width + 1, 2))
        y0, y1 = sorted(int(v) for v in rng.integers(0, upright.height + 1, 2))
        box = (x0, y0, max(x1, x0 + 1), max(y1, y0 + 1))
        cut = photo_files.upright(
            img.crop(photo_files.stored_box(box, orientation, img.width, img.height)), orientation
        )
        assert cut.tobytes() == upright.crop(box).tobytes()


def test_mpo_first_picture_is_used_and_recorded() -> None:
    from tests.fixtures.photos.corpus import astronaut, hopper, mpo

    p = process_photo(mpo(astronaut(), hopper()), SETTINGS)
    _assert_card_photo(p, "MPO")
    assert p.notes[0] == "MPO file of 2 pictures: the first picture was used"
    alone = process_photo(_load("astronaut.jpg"), SETTINGS)
    assert _mean_abs_diff(Image.open(io.BytesIO(p.jpeg)), Image.open(io.BytesIO(alone.jpeg))) < 12


def test_head_near_the_top_is_padded_with_the_backdrop_colour() -> None:
    src = Image.open(FIXTURES / "astronaut.jpg").crop((0, 14, 512, 512))
    buf = io.BytesIO()
    src.save(buf, "JPEG", quality=92)
    p = process_photo(buf.getvalue(), SETTINGS)
    img = _assert_card_photo(p, "JPEG")
    assert p.pad_colour is not None and any("at the top" in n for n in p.notes)
    # the padded band is the backdrop's colour: light grey, close to the row below it
    r, g, b = (int(p.pad_colour[i : i + 2], 16) for i in (1, 3, 5))
    assert min(r, g, b) > 150
    top_row = img.crop((0, 0, 40, 2)).convert("RGB").getpixel((20, 0))
    assert all(abs(a - b) < 16 for a, b in zip(top_row, (r, g, b), strict=True))


def test_16_bit_grey_is_reduced_band_by_band_without_float_copies() -> None:
    import tracemalloc

    import numpy as np

    side = 3000
    arr = (np.arange(side * side, dtype=np.uint32) % 65536).astype(np.uint16).reshape(side, side)
    img = Image.fromarray(arr)
    assert img.mode.startswith("I;16")
    tracemalloc.start()
    out = photo_files.to_8bit(img)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert out.mode == "L" and out.size == (side, side)
    # the 8-bit result (9 MB) and a band's 32-bit copies: never a full float64 copy (72 MB)
    assert peak < side * side + 3 * 4 * side * photo_files.BAND_ROWS
    assert out.getpixel((0, 0)) == 0 and out.getpixel((65535 % side, 65535 // side)) == 255
