"""Photo files: what a submitted picture is and how its pixels are read, for
:mod:`issuance.photos` (the checks and the card photo).

* :func:`open_picture` opens a JPEG (an MPO opens as its first picture) or PNG with the
  format's own decoder class: ``Image.open``'s bomb check is Pillow's limit, while the
  project's limit (``[photos] max_input_pixels``) is checked from the header by the pipeline,
  above or below Pillow's;
* :func:`decode` decodes fully (a JPEG with DCT scaling; a 16-bit greyscale PNG straight to
  8 bits), refusing truncated data and bilevel/float pictures;
* :func:`to_srgb` converts palettes, CMYK and ICC profiles to 8-bit sRGB and hands back the
  alpha channel (a transparent picture is refused by the pipeline, never flattened into a
  card photo);
* :func:`encode_in_band` writes the card photo's JPEG inside the size band (see
  :mod:`issuance.photos`);
* :func:`cut` resamples an upright region straight from the stored pixels (EXIF orientation
  applied by :func:`upright` and :func:`stored_box`), so no full-size copy is ever made.

Every refusal is a :class:`PhotoProblem` with a stable code (:func:`reject`).
"""

from __future__ import annotations

import contextlib
import io
import math
import struct
import warnings
from enum import StrEnum

import numpy as np
from PIL import (
    Image,
    ImageCms,
    ImageFile,
    JpegImagePlugin,
    PngImagePlugin,
    UnidentifiedImageError,
)

from issuance.errors import FieldProblem, PhotoRejected
from issuance.settings import PhotoSettings

#: Rows per band when a 16-bit picture is brought to 8 bits.
BAND_ROWS = 256
SUPPORTED_FORMATS = ("JPEG", "PNG")
#: The lowest JPEG quality the card photo is encoded at.
MIN_QUALITY = 40
_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class PhotoProblem(StrEnum):
    """Why a photo was refused (``PhotoRejected.details["reason"]``): stable codes."""

    EMPTY = "empty"
    NOT_AN_IMAGE = "not_an_image"
    UNSUPPORTED_FORMAT = "unsupported_format"
    TOO_MANY_PIXELS = "too_many_pixels"
    IMAGE_TOO_SMALL = "image_too_small"
    CORRUPT = "corrupt"
    UNSUPPORTED_MODE = "unsupported_mode"
    NOT_COLOUR = "not_colour"
    TOO_DARK = "too_dark"
    TRANSPARENT = "transparent"
    NO_FACE = "no_face"
    SEVERAL_FACES = "several_faces"
    NOT_FRONTAL = "not_frontal"
    FACE_TOO_SMALL = "face_too_small"
    BAD_FRAMING = "bad_framing"
    BACKGROUND_NOT_LIGHT = "background_not_light"
    BACKGROUND_NOT_PLAIN = "background_not_plain"
    BLURRED = "blurred"
    TOO_LITTLE_DETAIL = "too_little_detail"
    TOO_NOISY = "too_noisy"


def reject(problem: PhotoProblem, text: str) -> PhotoRejected:
    """Build the error for one reason (callers ``raise reject(...)``)."""
    err = PhotoRejected(
        f"photo rejected: {text}", problems=[FieldProblem("photo", text, problem.value)]
    )
    err.details["reason"] = problem.value
    return err


# --- the file ---------------------------------------------------------------------------------
HEADER_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, TypeError)


def _other_format(data: bytes) -> PhotoRejected:
    """Why a file that is neither JPEG nor PNG is refused (its format named if Pillow knows it)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fmt = Image.open(io.BytesIO(data)).format
    except Image.DecompressionBombError:
        fmt = "such"
    except (UnidentifiedImageError, *HEADER_ERRORS):
        fmt = None
    if fmt is None:
        return reject(PhotoProblem.NOT_AN_IMAGE, "the file is not an image (JPEG or PNG expected)")
    return reject(
        PhotoProblem.UNSUPPORTED_FORMAT, f"{fmt} images are not accepted (JPEG or PNG expected)"
    )


def open_picture(data: bytes) -> ImageFile.ImageFile:
    """The picture's header, opened with the JPEG or PNG decoder itself (not ``Image.open``:
    its bomb check is Pillow's, the project's limit is checked by :func:`_check_size`)."""
    if not data:
        raise reject(PhotoProblem.EMPTY, "the file is empty")
    if not data.startswith((_JPEG_MAGIC, _PNG_MAGIC)):
        raise _other_format(data)
    try:
        if data.startswith(_JPEG_MAGIC):  # an MPO file opens as its first picture
            return JpegImagePlugin.JpegImageFile(io.BytesIO(data))
        return PngImagePlugin.PngImageFile(io.BytesIO(data))
    except HEADER_ERRORS as exc:
        raise reject(PhotoProblem.CORRUPT, f"the image header is damaged ({exc})") from exc


def pictures(img: Image.Image) -> int:
    """How many pictures a JPEG holds (more than one: an MPO file)."""
    if "mp" not in img.info or not isinstance(img, JpegImagePlugin.JpegImageFile):
        return 1
    with contextlib.suppress(*HEADER_ERRORS, KeyError):
        mp = img._getmp()
        return int(mp[0xB001]) if mp else 1  # MPF NumberOfImages
    return 1


_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def orientation_of(img: Image.Image) -> int:
    """The EXIF orientation (1-8); 1 when absent or unreadable (the stored one is kept)."""
    with contextlib.suppress(*HEADER_ERRORS, KeyError):
        if img.format == "PNG":  # PNG's getexif() decodes the whole picture to look for eXIf
            raw = img.info.get("exif")
            exif = Image.Exif()
            if isinstance(raw, bytes):
                exif.load(raw)
            value = exif.get(0x0112, 1)
        else:
            value = img.getexif().get(0x0112, 1)
        if isinstance(value, int) and value in range(1, 9):
            return value
    return 1


def upright(img: Image.Image, orientation: int) -> Image.Image:
    method = _TRANSPOSE.get(orientation)
    return img if method is None else img.transpose(method)


def stored_box(
    box: tuple[float, float, float, float], orientation: int, width: int, height: int
) -> tuple[float, float, float, float]:
    """The box in stored pixels of an upright box (``width`` x ``height`` stored size), so that
    ``upright(img.crop(stored_box(b, o, *img.size)), o)`` equals ``upright(img, o).crop(b)``."""
    w, h = width, height
    maps = {
        1: lambda x, y: (x, y),
        2: lambda x, y: (w - x, y),
        3: lambda x, y: (w - x, h - y),
        4: lambda x, y: (x, h - y),
        5: lambda x, y: (y, x),
        6: lambda x, y: (y, h - x),
        7: lambda x, y: (w - y, h - x),
        8: lambda x, y: (w - y, x),
    }
    f = maps.get(orientation, maps[1])
    (x0, y0), (x1, y1) = f(box[0], box[1]), f(box[2], box[3])
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


def decode(data: bytes, scale: float) -> Image.Image:
    """Decode fully, a JPEG with DCT scaling to at least ``scale`` of its size; 16-bit and
    32-bit integer pictures come back as 8-bit greyscale."""
    img = open_picture(data)
    if img.format == "JPEG" and scale < 1.0:
        w, h = img.size
        img.draft(None, (max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale))))
    elif img.format == "PNG":
        _png_16_bit_as_8(img)
    try:
        img.load()
    except HEADER_ERRORS as exc:
        raise reject(
            PhotoProblem.CORRUPT, f"the image data is truncated or damaged ({exc})"
        ) from exc
    if img.mode in ("1", "F"):
        raise reject(
            PhotoProblem.UNSUPPORTED_MODE,
            "bilevel (1-bit) image: a greyscale or colour photograph is needed"
            if img.mode == "1"
            else "floating-point image: an 8- or 16-bit photograph is needed",
        )
    return to_8bit(img) if img.mode.startswith("I") else img


def _png_16_bit_as_8(img: ImageFile.ImageFile) -> None:
    """Have a 16-bit greyscale PNG decoded straight to 8 bits (libImaging's ``L;16B``
    unpacker keeps each sample's high byte): the full 16-bit image is never held. Left as it
    is when the file is not the plain one-tile case (it is then reduced by :func:`to_8bit`)."""
    if img.mode != "I;16" or len(img.tile) != 1 or img.tile[0].args != "I;16B":
        return
    img._mode = "L"
    img.tile = [img.tile[0]._replace(args="L;16B")]
    if isinstance(img.info.get("transparency"), int):
        img.info["transparency"] >>= 8


def to_8bit(img: Image.Image) -> Image.Image:
    """16/32-bit integer greyscale to 8 bits, band by band, in integer arithmetic (no
    full-size copy other than the 8-bit result)."""
    w, h = img.size
    if img.mode.startswith("I;16"):
        peak = 65535
    else:  # "I": 16-bit values in a 32-bit image, or 8-bit ones
        top = max(int(np.asarray(img.crop((0, y, w, min(h, y + BAND_ROWS)))).max())
                  for y in range(0, h, BAND_ROWS))  # fmt: skip
        peak = 65535 if top > 255 else 255
    out = np.empty((h, w), np.uint8)
    for y in range(0, h, BAND_ROWS):
        band = np.asarray(img.crop((0, y, w, min(h, y + BAND_ROWS)))).astype(np.uint32)
        np.minimum(band, peak, out=band)  # a 32-bit "I" picture may hold more than 16 bits
        band *= 255  # in place: at most 65535 * 255 < 2**32
        band += peak // 2
        band //= peak
        out[y : y + band.shape[0]] = band
    return Image.fromarray(out, "L")


def reduce_by(img: Image.Image, factor: int) -> Image.Image:
    """``img`` made ``factor`` times smaller in its own mode (box filter; nearest for palettes)."""
    if factor <= 1:
        return img
    if img.mode in ("P", "PA"):
        size = (max(1, img.width // factor), max(1, img.height // factor))
        return img.resize(size, Image.Resampling.NEAREST)
    return img.reduce(factor)


def to_srgb(img: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    """8-bit sRGB (ICC and CMYK converted, palettes expanded) and the alpha channel if any."""
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif (
        mode in ("PA", "LA", "La", "RGBa")
        or (mode == "L" and "transparency" in img.info)
        or (mode == "RGB" and "transparency" in img.info)
    ):
        img = img.convert("RGBA")
    icc = img.info.get("icc_profile")
    if icc and img.mode in ("RGB", "CMYK", "RGBA"):
        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            dst = ImageCms.createProfile("sRGB")
            out_mode = "RGBA" if img.mode == "RGBA" else "RGB"
            converted = ImageCms.profileToProfile(img, src, dst, outputMode=out_mode)
            if converted is not None:
                img = converted
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # a broken profile: fall back to the plain conversion below
    alpha: Image.Image | None = None
    if img.mode == "RGBA":
        alpha = img.getchannel("A")
        flat = Image.new("RGB", img.size, (255, 255, 255))
        flat.paste(img, mask=alpha)
        img = flat
    elif img.mode != "RGB":
        try:
            img = img.convert("RGB")
        except ValueError as exc:
            raise reject(
                PhotoProblem.UNSUPPORTED_MODE, f"image mode {img.mode} cannot be converted"
            ) from exc
    return img, alpha


def upright_width(img: Image.Image, orientation: int) -> int:
    return img.height if orientation in (5, 6, 7, 8) else img.width


def cut(
    img: Image.Image,
    orientation: int,
    box: tuple[float, float, float, float],
    size: tuple[int, int],
    resample: Image.Resampling,
) -> Image.Image:
    """The upright ``box`` of ``img`` (upright pixels of ``img``) resampled to ``size``
    (upright), straight from the stored pixels: the region is never copied at full size."""
    sbox = stored_box(box, orientation, img.width, img.height)
    ssize = (size[1], size[0]) if orientation in (5, 6, 7, 8) else size
    src = img
    if img.mode in ("P", "PA"):  # a palette resamples only by nearest: expand the region first
        ib = (math.floor(sbox[0]), math.floor(sbox[1]), math.ceil(sbox[2]), math.ceil(sbox[3]))
        src = img.crop(ib).convert("RGBA")
        sbox = (sbox[0] - ib[0], sbox[1] - ib[1], sbox[2] - ib[0], sbox[3] - ib[1])
    return upright(src.resize(ssize, resample, box=sbox, reducing_gap=3.0), orientation)


def min_alpha(alpha: Image.Image) -> int:
    low = alpha.getextrema()[0]
    assert isinstance(low, int)
    return low


def transparent() -> PhotoRejected:
    return reject(
        PhotoProblem.TRANSPARENT,
        "the picture is partly transparent where the card photo is taken from: send an opaque "
        "photograph",
    )


# --- encoding ---------------------------------------------------------------------------------
def _encode(img: Image.Image, quality: int, subsampling: int, dpi: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, subsampling=subsampling, optimize=True, dpi=(dpi, dpi))
    return buf.getvalue()


def encode_in_band(img: Image.Image, settings: PhotoSettings) -> bytes:
    """The best-quality baseline JPEG of ``img`` whose size is within the settings' band."""
    lo_b, hi_b = settings.min_bytes, settings.max_bytes
    for subsampling, q_top in ((2, 95), (0, 100)):  # 4:2:0, then 4:4:4
        top = _encode(img, q_top, subsampling, settings.dpi)
        if len(top) < lo_b:
            continue  # too small even at the top quality: try without subsampling
        if len(top) <= hi_b:
            return top
        low = _encode(img, MIN_QUALITY, subsampling, settings.dpi)
        if len(low) > hi_b:
            raise reject(
                PhotoProblem.TOO_NOISY,
                f"the photo does not compress under {hi_b} bytes even at quality "
                f"{MIN_QUALITY} (too much noise)",
            )
        best, lo, hi = low, MIN_QUALITY, q_top  # invariant: size(lo) <= hi_b < size(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            out = _encode(img, mid, subsampling, settings.dpi)
            if len(out) <= hi_b:
                lo, best = mid, out
            else:
                hi = mid
        if len(best) >= lo_b:
            return best
        raise reject(
            PhotoProblem.TOO_LITTLE_DETAIL,
            f"no JPEG quality gives a file between {lo_b} and {hi_b} bytes",
        )
    raise reject(
        PhotoProblem.TOO_LITTLE_DETAIL,
        f"the photo has too little detail: even at full quality its file is under "
        f"{lo_b} bytes (blank or overexposed?)",
    )
