"""Holder photos: check a submitted picture and turn it into the card's photo file.

``process_photo(data, settings)`` accepts a JPEG, PNG or MPO (phone) picture from a counter
camera, a scanner or a phone and either returns a :class:`ProcessedPhoto` (a baseline JPEG of
exactly ``settings.width`` x ``settings.height`` pixels, 24-bit RGB, no metadata, whose size
lies in ``[settings.min_bytes, settings.max_bytes]``, with ``notes`` saying what was done to it)
or raises :class:`issuance.errors.PhotoRejected` with one precise reason. The reason's stable
code (:class:`PhotoProblem`) is in ``error.details["reason"]`` and on the field problem
(``error.problems[0].code``); the human text is ``error.problems[0].reason``.

What is checked, in this order (the first failure is reported):

1. *The file*: not empty; a JPEG or PNG by content (an MPO's first picture is an ordinary JPEG:
   it is used and the record says so); the pixel count in its header is at most
   ``settings.max_input_pixels`` -- the project's limit, checked before anything is decoded and
   honoured whether it is above or below Pillow's own bomb limit (the decoders are opened
   directly, so Pillow's limit plays no part); the upright picture is at least
   ``settings.width / MAX_UPSCALE`` x ``settings.height / MAX_UPSCALE`` (``image_too_small``);
   it decodes completely (a truncated file is ``corrupt``, never half-used).
2. *The pixels*: EXIF orientation is applied; CMYK and ICC profiles are converted to sRGB with
   LittleCMS; 16-bit images are scaled to 8 bits band by band with integer arithmetic; palette
   images are expanded. Bilevel (1-bit) and float images are ``unsupported_mode``. A greyscale
   picture is ``not_colour`` where ``settings.require_colour`` is set. A picture with nothing
   bright in it is ``too_dark``.
3. *One face*: OpenCV's bundled Haar cascade ``haarcascade_frontalface_default.xml`` on a grey
   copy whose long side is ``DETECTOR.long_side``, with the scale step, neighbour count and
   least face size of :data:`DETECTOR` -- chosen by measurement on the labelled corpus of
   ``tests/photo_corpus`` (``python -m bench.photo_detect`` prints the sweep). None ->
   ``no_face``. A candidate counts as a face if both eyes are found in it (the eye check runs
   on the face resampled to ``EYE_FACE_WIDTH`` px, whatever its size in the picture) or the
   detector is very sure of it; more than one -> ``several_faces``; candidates but none
   frontal -> ``not_frontal``. The strongest face must be at least
   ``FACE_FRACTION * width / MAX_UPSCALE`` source pixels wide (``face_too_small``) and not too
   dark (``too_dark``).
4. *Facing the camera*: both eyes, one on each side of the face box's centre line; the line
   through them may tilt at most ``MAX_TILT_DEG`` and their midpoint may be off centre by at
   most ``MAX_EYE_OFFSET`` of the box width. A heuristic, not a pose estimator.
5. *Framing*: the ID-photo crop puts the face box at ``FACE_FRACTION`` of the width, its centre
   at ``FACE_CENTRE_Y`` of the height. The head (the face box with ``HEAD_MARGIN`` around it)
   must be inside the picture, else ``bad_framing`` names the edge that cuts it. Where the crop
   runs past an edge the missing strip is padded with the colour of the picture's own border
   strip there (its median), provided that strip is plain background (top and sides) and the
   padding is at most ``MAX_PAD`` of the crop; the colour and the amount are in the photo's
   ``notes``. Every pixel of the crop must be opaque (``transparent``): a faded picture is never
   flattened into a card photo.
6. *Background*: in the card photo, the band above the head and the two bands beside it must be
   light (median luminance >= ``BG_MIN_LUMA``) and plain (luminance standard deviation
   <= ``BG_MAX_STD`` and mean gradient <= ``BG_MAX_GRADIENT``).
7. *Sharpness*: the variance of the Laplacian of the face in the card photo, resampled to
   128x128, must be at least ``MIN_SHARPNESS``.

Encoding: the size band is a rule about the *file* (the card centres' "20-100 KB electronic
photo"). The largest JPEG quality in [``MIN_QUALITY``, 95] whose file fits under ``max_bytes``
is chosen by bisection with 4:2:0 chroma subsampling; if even quality 95 is below ``min_bytes``
the search is repeated with 4:4:4 subsampling up to quality 100; if that is still too small the
picture has too little detail to be a usable photograph (blank or blown out) and is refused
(``too_little_detail``). Nothing is ever padded into the file. If even ``MIN_QUALITY`` is above
``max_bytes`` the photo is refused as too noisy.

Memory and speed: a JPEG is decoded with libjpeg's DCT scaling (Pillow's ``draft``) to a
short side of about ``DECODE_SIDE``, and decoded again at the scale the crop needs only when
that is finer; the checks run on a copy reduced to a short side of about ``WORK_SIDE``. A PNG
is decoded once at full size in its own mode (a 16-bit greyscale one straight to 8 bits, never
through a full-size 16-bit or float copy); the check copies are made from it by integer
reduction, and the face patches and the card crop are resampled straight from it, so only
card-sized pieces are ever colour-converted. ``python -m bench.photo_memory`` measures the peak.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import struct
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import cv2
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

#: Face box (Haar) width as a fraction of the output width.
FACE_FRACTION = 0.44
#: Vertical position of the face box centre, as a fraction of the output height from the top.
FACE_CENTRE_Y = 0.42
#: The output may be at most this many times larger than the source around the face.
MAX_UPSCALE = 2.0
#: The head around the face box (fractions of the box: left/right, top for the hair, bottom for
#: the chin): it must lie inside the picture.
HEAD_MARGIN = (0.20, 0.50, 0.12)
#: At most this fraction of the crop's width (sides) or height (top, bottom) may be padded;
#: above PLAIN_PAD the picture's strip the colour comes from must be plain background.
MAX_PAD = 0.25
PLAIN_PAD = 0.03
#: Background limits (luminance 0..255).
BG_MIN_LUMA = 150.0
BG_MAX_STD = 30.0
BG_MAX_GRADIENT = 12.0
#: Variance of the Laplacian of the card photo's face resampled to 128x128.
MIN_SHARPNESS = 60.0
#: Frontal-pose limits.
MAX_TILT_DEG = 15.0
MAX_EYE_OFFSET = 0.15
#: "Sure it is a face" without eyes (Haar neighbour count).
STRONG_NEIGHBOURS = 10
#: The eye check runs on the face resampled to these widths (the first that finds both eyes
#: counts: Haar eye cascades are sensitive to scale).
EYE_FACE_WIDTHS = (160, 140, 120)
#: Roll angles tried, when no upright face is found, to tell a tilted head from no face.
TILT_PROBES = (-25.0, 25.0)
#: Too dark: the 95th percentile of the picture's luminance, and the face's mean luminance.
DARK_P95 = 70.0
DARK_FACE_MEAN = 60.0
#: Greyscale: mean chroma (max - min channel) below this, on a 0..255 scale.
GREY_CHROMA = 4.0
#: Short side a JPEG is first decoded to (DCT scaling picks the next power-of-two reduction):
#: fine enough for the card photo unless the face is small in the frame (a JPEG's entropy
#: decoding costs the same at any scale, so one decode is worth more than a coarse one).
DECODE_SIDE = 700
#: Short side of the copy the checks and the detector run on (integer reduction).
WORK_SIDE = 360
#: The card photo may be upscaled this much from the decode it is cut from (a JPEG is decoded
#: again at the crop's scale only beyond it).
UPSCALE_SLACK = 1.15
#: Rows per band when a 16-bit picture is brought to 8 bits.
BAND_ROWS = 256
MIN_QUALITY = 40
SUPPORTED_FORMATS = ("JPEG", "PNG")
_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Detector:
    """Face detector settings (chosen by measurement: ``python -m bench.photo_detect``)."""

    #: Long side of the grey copy the cascade runs on.
    long_side: int
    #: Scale step between pyramid levels.
    scale_step: float
    #: Haar neighbour count for a candidate.
    min_neighbours: int
    #: Least face width searched, as a fraction of the detection copy's short side.
    min_face_fraction: float


DETECTOR = Detector(long_side=400, scale_step=1.2, min_neighbours=4, min_face_fraction=0.15)


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


@dataclass(frozen=True)
class ProcessedPhoto:
    """The card photo: a metadata-free baseline JPEG and what was found in it."""

    jpeg: bytes
    width: int
    height: int
    #: (left, top, right, bottom) of the detected face in output pixels.
    face_box: tuple[int, int, int, int]
    sha256: str
    #: "JPEG", "MPO" or "PNG": the submitted file's format.
    source_format: str
    #: What was done beyond cropping and scaling (MPO first picture used, padding and its
    #: colour), for the photo's record.
    notes: tuple[str, ...] = ()
    #: "#rrggbb" of the padding at the top or sides, if any.
    pad_colour: str | None = None

    def record(self) -> dict[str, Any]:
        """What the application's audit record keeps about the photo."""
        return {
            "photo_sha256": self.sha256,
            "photo_source_format": self.source_format,
            "photo_notes": list(self.notes),
        }


def reject(problem: PhotoProblem, text: str) -> PhotoRejected:
    """Build the error for one reason (callers ``raise reject(...)``)."""
    err = PhotoRejected(
        f"photo rejected: {text}", problems=[FieldProblem("photo", text, problem.value)]
    )
    err.details["reason"] = problem.value
    return err


def minimum_size(settings: PhotoSettings) -> tuple[int, int]:
    """The least upright picture (width, height): the output upscaled at most MAX_UPSCALE."""
    return math.ceil(settings.width / MAX_UPSCALE), math.ceil(settings.height / MAX_UPSCALE)


# --- detectors (one per thread: CascadeClassifier is not documented as thread-safe) -------------
_local = threading.local()


def _cascades() -> tuple[Any, tuple[Any, ...]]:
    cached = getattr(_local, "cascades", None)
    if cached is None:
        base = cv2.data.haarcascades  # type: ignore[attr-defined]
        face = cv2.CascadeClassifier(base + "haarcascade_frontalface_default.xml")
        eyes = (
            cv2.CascadeClassifier(base + "haarcascade_eye.xml"),
            cv2.CascadeClassifier(base + "haarcascade_eye_tree_eyeglasses.xml"),
            cv2.CascadeClassifier(base + "haarcascade_lefteye_2splits.xml"),
            cv2.CascadeClassifier(base + "haarcascade_righteye_2splits.xml"),
        )
        if face.empty() or any(e.empty() for e in eyes):
            raise RuntimeError(f"OpenCV Haar cascades missing under {base}")
        cached = (face, eyes)
        _local.cascades = cached
    return cached


# --- the file ---------------------------------------------------------------------------------
_HEADER_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, TypeError)


def _other_format(data: bytes) -> PhotoRejected:
    """Why a file that is neither JPEG nor PNG is refused (its format named if Pillow knows it)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fmt = Image.open(io.BytesIO(data)).format
    except Image.DecompressionBombError:
        fmt = "such"
    except (UnidentifiedImageError, *_HEADER_ERRORS):
        fmt = None
    if fmt is None:
        return reject(PhotoProblem.NOT_AN_IMAGE, "the file is not an image (JPEG or PNG expected)")
    return reject(
        PhotoProblem.UNSUPPORTED_FORMAT, f"{fmt} images are not accepted (JPEG or PNG expected)"
    )


def _open(data: bytes) -> ImageFile.ImageFile:
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
    except _HEADER_ERRORS as exc:
        raise reject(PhotoProblem.CORRUPT, f"the image header is damaged ({exc})") from exc


def _pictures(img: Image.Image) -> int:
    """How many pictures a JPEG holds (more than one: an MPO file)."""
    if "mp" not in img.info or not isinstance(img, JpegImagePlugin.JpegImageFile):
        return 1
    with contextlib.suppress(*_HEADER_ERRORS, KeyError):
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


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation (1-8); 1 when absent or unreadable (the stored one is kept)."""
    with contextlib.suppress(*_HEADER_ERRORS, KeyError):
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


def _upright(img: Image.Image, orientation: int) -> Image.Image:
    method = _TRANSPOSE.get(orientation)
    return img if method is None else img.transpose(method)


def stored_box(
    box: tuple[float, float, float, float], orientation: int, width: int, height: int
) -> tuple[float, float, float, float]:
    """The box in stored pixels of an upright box (``width`` x ``height`` stored size), so that
    ``_upright(img.crop(stored_box(b, o, *img.size)), o)`` equals ``_upright(img, o).crop(b)``."""
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


def _check_size(img: Image.Image, orientation: int, settings: PhotoSettings) -> tuple[int, int]:
    """The upright full size, once the header's pixel count and size are acceptable."""
    w, h = img.size
    if w <= 0 or h <= 0:
        raise reject(PhotoProblem.CORRUPT, "the image has no pixels")
    if w * h > settings.max_input_pixels:
        raise reject(
            PhotoProblem.TOO_MANY_PIXELS,
            f"the image is {w}x{h} = {w * h:,} pixels, more than the "
            f"{settings.max_input_pixels:,} allowed",
        )
    uw, uh = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
    min_w, min_h = minimum_size(settings)
    if uw < min_w or uh < min_h:
        raise reject(
            PhotoProblem.IMAGE_TOO_SMALL,
            f"the image is {uw}x{uh} pixels, at least {min_w}x{min_h} are needed",
        )
    return uw, uh


def _decode(data: bytes, scale: float) -> Image.Image:
    """Decode fully, a JPEG with DCT scaling to at least ``scale`` of its size; 16-bit and
    32-bit integer pictures come back as 8-bit greyscale."""
    img = _open(data)
    if img.format == "JPEG" and scale < 1.0:
        w, h = img.size
        img.draft(None, (max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale))))
    elif img.format == "PNG":
        _png_16_bit_as_8(img)
    try:
        img.load()
    except _HEADER_ERRORS as exc:
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
    return _to_8bit(img) if img.mode.startswith("I") else img


def _png_16_bit_as_8(img: ImageFile.ImageFile) -> None:
    """Have a 16-bit greyscale PNG decoded straight to 8 bits (libImaging's ``L;16B``
    unpacker keeps each sample's high byte): the full 16-bit image is never held. Left as it
    is when the file is not the plain one-tile case (it is then reduced by :func:`_to_8bit`)."""
    if img.mode != "I;16" or len(img.tile) != 1 or img.tile[0].args != "I;16B":
        return
    img._mode = "L"
    img.tile = [img.tile[0]._replace(args="L;16B")]
    if isinstance(img.info.get("transparency"), int):
        img.info["transparency"] >>= 8


def _to_8bit(img: Image.Image) -> Image.Image:
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


def _reduce(img: Image.Image, factor: int) -> Image.Image:
    """``img`` made ``factor`` times smaller in its own mode (box filter; nearest for palettes)."""
    if factor <= 1:
        return img
    if img.mode in ("P", "PA"):
        size = (max(1, img.width // factor), max(1, img.height // factor))
        return img.resize(size, Image.Resampling.NEAREST)
    return img.reduce(factor)


def _to_srgb(img: Image.Image) -> tuple[Image.Image, Image.Image | None]:
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


# --- checks -----------------------------------------------------------------------------------
def _check_light_and_colour(rgb: np.ndarray, gray: np.ndarray, settings: PhotoSettings) -> None:
    p95 = float(np.percentile(gray, 95))
    if p95 < DARK_P95:
        raise reject(
            PhotoProblem.TOO_DARK,
            f"the picture is too dark (95th percentile of brightness {p95:.0f}, at least "
            f"{DARK_P95:.0f} needed): take it again in more light",
        )
    if settings.require_colour:
        small = cv2.resize(rgb, (64, 64), interpolation=cv2.INTER_AREA).astype(np.int16)
        chroma = float(np.mean(small.max(axis=2) - small.min(axis=2)))
        if chroma < GREY_CHROMA:
            raise reject(
                PhotoProblem.NOT_COLOUR,
                "the picture is greyscale: this card centre's rules require a colour photograph",
            )


def _detect_faces(gray: np.ndarray, det: Detector) -> list[tuple[tuple[int, int, int, int], int]]:
    """Face candidates with their neighbour counts (detector confidence), strongest first.

    Faces at least ``det.min_face_fraction`` of the short side are looked for first (a
    portrait's face, few pyramid levels); only if there is none, smaller ones down to the
    cascade's 24 px."""
    face_cascade, _ = _cascades()
    h, w = gray.shape
    large = max(24, int(min(w, h) * det.min_face_fraction))
    found: list[tuple[tuple[int, int, int, int], int]] = []
    for min_side, max_side in ((large, 0), (24, large)):
        if max_side and max_side <= min_side:
            break
        faces, neighbours = face_cascade.detectMultiScale2(
            gray,
            scaleFactor=det.scale_step,
            minNeighbors=det.min_neighbours,
            minSize=(min_side, min_side),
            maxSize=(max_side, max_side),
        )
        found = [
            ((int(x), int(y), int(fw), int(fh)), int(n))
            for (x, y, fw, fh), n in zip(faces, neighbours, strict=True)
        ]
        if found:
            break
    if not found:
        raise reject(PhotoProblem.NO_FACE, "no face was found")
    return sorted(found, key=lambda c: -c[1])


def _check_frontal(face: np.ndarray) -> None:
    """Both eyes in the upper part of ``face`` (a grey face box EYE_FACE_WIDTH wide)."""
    _, eye_cascades = _cascades()
    h, w = face.shape
    roi = face[: int(h * 0.6), :]
    min_eye = max(8, w // 9)
    found: list[tuple[float, float]] = []
    for cascade in eye_cascades:
        for ex, ey, ew, eh in cascade.detectMultiScale(
            roi,
            scaleFactor=1.1,
            minNeighbors=3,
            minSize=(min_eye, min_eye),
            maxSize=(w // 2, w // 2),
        ):
            found.append((ex + ew / 2.0, ey + eh / 2.0))
        if any(p[0] < w * 0.5 for p in found) and any(p[0] >= w * 0.5 for p in found):
            break  # both eyes seen: the other cascades are not needed
    left = [p for p in found if p[0] < w * 0.5]
    right = [p for p in found if p[0] >= w * 0.5]
    if not left or not right:
        raise reject(
            PhotoProblem.NOT_FRONTAL,
            "both eyes must be visible: face the camera, eyes open, no dark glasses",
        )
    # the most plausible pair: the two eye candidates closest to the upper third line
    lx, ly = min(left, key=lambda p: abs(p[1] - h * 0.38))
    rx, ry = min(right, key=lambda p: abs(p[1] - h * 0.38))
    tilt = math.degrees(math.atan2(abs(ry - ly), max(1.0, rx - lx)))
    if tilt > MAX_TILT_DEG:
        raise reject(PhotoProblem.NOT_FRONTAL, f"the head is tilted by about {tilt:.0f} degrees")
    offset = abs((lx + rx) / 2.0 - w / 2.0) / w
    if offset > MAX_EYE_OFFSET:
        raise reject(PhotoProblem.NOT_FRONTAL, "the head is turned to one side")


def _frontal_at_some_width(face: np.ndarray, widths: tuple[int, ...]) -> None:
    """:func:`_check_frontal` on the grey face resampled to each of ``widths``; the first
    width's reason if none finds both eyes."""
    first: PhotoRejected | None = None
    h, w = face.shape
    for side in widths:
        interp = cv2.INTER_AREA if w > side else cv2.INTER_LINEAR
        patch = cv2.resize(face, (side, max(1, round(side * h / max(1, w)))), interpolation=interp)
        try:
            _check_frontal(patch)
            return
        except PhotoRejected as exc:
            first = first or exc
    assert first is not None
    raise first


def _tilted_face(gray: np.ndarray, det: Detector) -> float | None:
    """The roll angle at which a face is found, when none is found upright."""
    h, w = gray.shape
    for angle in TILT_PROBES:
        m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, 1.0)
        turned = cv2.warpAffine(gray, m, (w, h), borderMode=cv2.BORDER_REPLICATE)
        with contextlib.suppress(PhotoRejected):
            _detect_faces(turned, det)
            return angle
    return None


Candidates = list[tuple[tuple[int, int, int, int], int]]


def _candidates(gray: np.ndarray, det: Detector) -> Candidates:
    """Face candidates, strongest first; none upright: ``not_frontal`` if a face is found
    with the picture turned (a tilted head), else ``no_face``."""
    try:
        return _detect_faces(gray, det)
    except PhotoRejected:
        angle = _tilted_face(gray, det)
        if angle is None:
            raise
        raise reject(
            PhotoProblem.NOT_FRONTAL,
            f"the head is tilted by about {abs(angle):.0f} degrees or more: hold it upright",
        ) from None


def _one_frontal(
    candidates: Candidates, face_of: Callable[[tuple[int, int, int, int]], np.ndarray]
) -> tuple[int, int, int, int]:
    """The one frontal face among the candidates (``face_of(box)``: its grey pixels).

    A candidate counts as a face if both eyes are found in it or if the detector is very sure
    (``STRONG_NEIGHBOURS``): a weak detection in a shirt's folds is not a second face, but a
    second person wearing glasses is.
    """
    frontal: list[tuple[int, int, int, int]] = []
    faces = 0
    first_error: PhotoRejected | None = None
    for i, (box, neighbours) in enumerate(candidates):
        try:  # the strongest candidate at every width, the others (often not faces) at one
            _frontal_at_some_width(face_of(box), EYE_FACE_WIDTHS if i == 0 else EYE_FACE_WIDTHS[:1])
        except PhotoRejected as exc:
            first_error = first_error or exc
            faces += neighbours >= STRONG_NEIGHBOURS
            continue
        frontal.append(box)
        faces += 1
    if faces > 1:
        raise reject(
            PhotoProblem.SEVERAL_FACES,
            f"{faces} faces were found: the photo must show the holder alone",
        )
    if not frontal:
        assert first_error is not None
        raise first_error
    return frontal[0]


def _check_face_light(face: np.ndarray) -> None:
    face_mean = float(face.mean())
    if face_mean < DARK_FACE_MEAN:
        raise reject(
            PhotoProblem.TOO_DARK,
            f"the face is too dark (mean brightness {face_mean:.0f}, at least "
            f"{DARK_FACE_MEAN:.0f} needed): light the face evenly",
        )


_EDGES = ("left", "top", "right", "bottom")


def _crop_box(
    face: tuple[float, float, float, float], img_w: int, img_h: int, out_w: int, out_h: int
) -> tuple[float, float, float, float]:
    """ID-photo crop (left, top, right, bottom) in source pixels for a face box; it may run
    past the picture's edges (that part is padded) but the head may not."""
    fx, fy, fw, fh = face
    side, above, below = HEAD_MARGIN
    head = (fx - side * fw, fy - above * fh, fx + fw + side * fw, fy + fh + below * fh)
    cut = [
        edge
        for edge, out in zip(
            _EDGES,
            (head[0] < 0, head[1] < 0, head[2] > img_w, head[3] > img_h),
            strict=True,
        )
        if out
    ]
    if cut:
        raise reject(
            PhotoProblem.BAD_FRAMING,
            f"the head is cut by the {' and '.join(cut)} edge: the whole head and some "
            "background around it must be in the picture",
        )
    crop_w = fw / FACE_FRACTION
    crop_h = crop_w * out_h / out_w
    left = fx + fw / 2.0 - crop_w / 2.0
    top = fy + fh / 2.0 - FACE_CENTRE_Y * crop_h
    box = (left, top, left + crop_w, top + crop_h)
    pads = (
        -box[0] / crop_w,
        -box[1] / crop_h,
        (box[2] - img_w) / crop_w,
        (box[3] - img_h) / crop_h,
    )
    too_far = [edge for edge, pad in zip(_EDGES, pads, strict=True) if pad > MAX_PAD]
    if too_far:
        raise reject(
            PhotoProblem.BAD_FRAMING,
            f"the face is too close to the {' and '.join(too_far)} edge: leave more "
            "background around the head",
        )
    return box


def _pad_colours(
    work: np.ndarray,
    crop: tuple[float, float, float, float],
    face: tuple[float, float, float, float],
    f: float,
) -> dict[str, tuple[int, int, int]]:
    """For each edge the crop runs past, the median colour of the picture's own strip along
    that edge, beside the head (``work`` RGB; ``crop`` and ``face`` in source pixels, ``f``
    source pixels per work pixel). Beyond PLAIN_PAD, the strip at the top or a side must be
    plain background: padding continues a backdrop, it never invents one."""
    h, w = work.shape[:2]
    left, top, right, bottom = (v / f for v in crop)
    fx, fy, fw, fh = (v / f for v in face)
    cw, ch = right - left, bottom - top
    strip = max(2, round(0.03 * cw))
    xs = slice(max(0, math.floor(left)), min(w, math.ceil(right)))
    ys = slice(max(0, math.floor(top)), min(h, math.ceil(fy + fh / 2)))
    head = (max(0, math.floor(fx - 0.35 * fw)), min(w, math.ceil(fx + 1.35 * fw)))
    top_strip = work[:strip, xs]
    beside = np.concatenate(
        [top_strip[:, : max(0, head[0] - xs.start)], top_strip[:, max(0, head[1] - xs.start) :]],
        axis=1,
    )
    regions = {
        "left": work[ys, :strip],
        "top": beside if beside.size else top_strip,
        "right": work[ys, w - strip :],
        "bottom": work[h - strip :, xs],
    }
    amounts = {"left": -left / cw, "top": -top / ch, "right": (right - w) / cw,
               "bottom": (bottom - h) / ch}  # fmt: skip
    colours: dict[str, tuple[int, int, int]] = {}
    for edge, region in regions.items():
        if amounts[edge] <= 0:
            continue
        pixels = region.reshape(-1, 3)
        if edge != "bottom" and amounts[edge] > PLAIN_PAD:
            luma = pixels @ np.array([0.299, 0.587, 0.114])
            if pixels.size == 0 or float(luma.std()) > BG_MAX_STD:
                raise reject(
                    PhotoProblem.BAD_FRAMING,
                    f"the face is too close to the {edge} edge and the background there is "
                    "not plain: leave more background around the head",
                )
        med = np.median(pixels, axis=0) if pixels.size else np.array([255, 255, 255])
        colours[edge] = (int(med[0]), int(med[1]), int(med[2]))
    return colours


def _check_background(gray: np.ndarray) -> None:
    h, w = gray.shape
    top = gray[: max(2, int(h * 0.07)), :]
    side_rows = slice(int(h * 0.07), int(h * 0.42))
    sides = [gray[side_rows, : max(2, int(w * 0.10))], gray[side_rows, w - max(2, int(w * 0.10)) :]]
    regions = [top, *sides]
    pixels = np.concatenate([r.reshape(-1) for r in regions]).astype(np.float32)
    median = float(np.median(pixels))
    if median < BG_MIN_LUMA:
        raise reject(
            PhotoProblem.BACKGROUND_NOT_LIGHT,
            f"the background is too dark (median brightness {median:.0f}, "
            f"at least {BG_MIN_LUMA:.0f} needed): use a plain white or light background",
        )
    std = float(pixels.std())
    grad = float(
        np.mean(
            [
                np.mean(np.abs(np.diff(r.astype(np.float32), axis=1)))
                + np.mean(np.abs(np.diff(r.astype(np.float32), axis=0)))
                for r in regions
            ]
        )
    )
    if std > BG_MAX_STD or grad > BG_MAX_GRADIENT:
        raise reject(
            PhotoProblem.BACKGROUND_NOT_PLAIN,
            f"the background is not plain (brightness spread {std:.0f}, texture {grad:.1f}): "
            "stand in front of a plain light wall",
        )


def _check_sharpness(gray: np.ndarray, box: tuple[int, int, int, int]) -> float:
    """Variance of the Laplacian of the face (``box`` = left, top, right, bottom in ``gray``)."""
    left, top, right, bottom = box
    face = cv2.resize(gray[top:bottom, left:right], (128, 128), interpolation=cv2.INTER_AREA)
    value = float(cv2.Laplacian(face, cv2.CV_32F).var())
    if value < MIN_SHARPNESS:
        raise reject(
            PhotoProblem.BLURRED,
            f"the face is not sharp (focus measure {value:.0f}, at least "
            f"{MIN_SHARPNESS:.0f} needed)",
        )
    return value


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


# --- the pipeline -----------------------------------------------------------------------------
def process_photo(
    data: bytes, settings: PhotoSettings, *, detector: Detector = DETECTOR
) -> ProcessedPhoto:
    """Check a submitted photo and produce the card photo; raise PhotoRejected with a reason."""
    try:
        return _process(data, settings, detector)
    except PhotoRejected:
        raise
    except (*_HEADER_ERRORS, cv2.error) as exc:
        # a decoder or library choking on hostile input: still a reason, never a crash
        raise reject(PhotoProblem.CORRUPT, f"the image could not be processed ({exc})") from exc


def _process(data: bytes, settings: PhotoSettings, det: Detector) -> ProcessedPhoto:
    out_w, out_h = settings.width, settings.height
    header = _open(data)
    orientation = _orientation(header)
    full_w, full_h = _check_size(header, orientation, settings)
    source_format, notes = str(header.format), []
    pictures = _pictures(header)
    if pictures > 1:
        source_format = "MPO"
        notes.append(f"MPO file of {pictures} pictures: the first picture was used")
    raw = _decode(data, min(1.0, DECODE_SIDE / min(full_w, full_h)))
    # the checks' copy: integer reduction to a short side of about WORK_SIDE, upright, sRGB
    work_img, alpha = _to_srgb(
        _upright(_reduce(raw, max(1, min(raw.size) // WORK_SIDE)), orientation)
    )
    work = np.asarray(work_img)
    f = full_w / work_img.width  # source pixels per work pixel
    work_gray = cv2.cvtColor(work, cv2.COLOR_RGB2GRAY)
    _check_light_and_colour(work, work_gray, settings)
    h, w = work_gray.shape
    scale = min(1.0, det.long_side / max(w, h))
    gray = (
        work_gray
        if scale >= 1.0
        else cv2.resize(
            work_gray,
            (max(1, round(w * scale)), max(1, round(h * scale))),
            interpolation=cv2.INTER_AREA,
        )
    )
    try:
        try:
            candidates = _candidates(gray, det)
        except PhotoRejected as exc:
            if exc.details["reason"] != PhotoProblem.NO_FACE or f < 2.0:
                raise
            # perhaps a small face in a large frame: look again on a copy twice as fine
            finer = (
                raw  # fine enough already (or full size, a PNG): never decoded twice
                if min(raw.size) >= 1.9 * WORK_SIDE or _upright_width(raw, orientation) >= full_w
                else _decode(data, min(1.0, 2 * WORK_SIDE / min(full_w, full_h)))
            )
            finer = _reduce(finer, max(1, min(finer.size) // (2 * WORK_SIDE)))
            gray = np.asarray(_to_srgb(_upright(finer, orientation))[0].convert("L"))
            del finer
            candidates = _candidates(gray, det)
        k = full_w / gray.shape[1]  # source pixels per detection pixel
        strongest = candidates[0][0][2] * k
        min_face = FACE_FRACTION * out_w / MAX_UPSCALE
        if strongest < min_face:
            raise reject(
                PhotoProblem.FACE_TOO_SMALL,
                f"the face is {strongest:.0f} pixels wide, at least {min_face:.0f} needed: "
                "come closer to the camera or use a higher resolution",
            )
        # the picture at the scale the card photo needs (the face checks use it too)
        fine = _fine(data, raw, orientation, full_w, out_w * FACE_FRACTION / strongest)
        box = _one_frontal(candidates, lambda b: _grey_part(fine, orientation, full_w, b, k))
    except PhotoRejected as exc:
        if (
            alpha is None
            or _min_alpha(alpha) == 255
            or exc.details["reason"]
            in (
                PhotoProblem.SEVERAL_FACES,
                PhotoProblem.TOO_DARK,
            )
        ):
            raise
        # the face is not seen on the flattened picture: the transparency is the reason
        raise _transparent() from exc
    del raw
    fx, fy, fw, fh = (v * k for v in box)
    _check_face_light(
        work_gray[round(fy / f) : round((fy + fh) / f), round(fx / f) : round((fx + fw) / f)]
    )
    crop = _crop_box((fx, fy, fw, fh), full_w, full_h, out_w, out_h)
    pads = _pad_colours(work, crop, (fx, fy, fw, fh), f)
    photo = _render(fine, orientation, crop, (full_w, full_h), pads, settings)
    sx = out_w / (crop[2] - crop[0])
    sy = out_h / (crop[3] - crop[1])
    face_box = (
        max(0, round((fx - crop[0]) * sx)),
        max(0, round((fy - crop[1]) * sy)),
        min(out_w, round((fx + fw - crop[0]) * sx)),
        min(out_h, round((fy + fh - crop[1]) * sy)),
    )
    pad_colour = None
    for edge, colour in pads.items():
        hexa = "#{:02x}{:02x}{:02x}".format(*colour)
        amount = {
            "left": -crop[0] * sx,
            "top": -crop[1] * sy,
            "right": (crop[2] - full_w) * sx,
            "bottom": (crop[3] - full_h) * sy,
        }[edge]
        notes.append(f"padded {amount:.0f} px at the {edge} with the picture's own colour {hexa}")
        if edge != "bottom":
            pad_colour = pad_colour or hexa
    out_gray = np.asarray(photo.convert("L"))
    _check_background(out_gray)
    _check_sharpness(out_gray, face_box)
    jpeg = encode_in_band(photo, settings)
    return ProcessedPhoto(
        jpeg=jpeg,
        width=out_w,
        height=out_h,
        face_box=face_box,
        sha256=hashlib.sha256(jpeg).hexdigest(),
        source_format=source_format,
        notes=tuple(notes),
        pad_colour=pad_colour,
    )


def _upright_width(img: Image.Image, orientation: int) -> int:
    return img.height if orientation in (5, 6, 7, 8) else img.width


def _fine(data: bytes, raw: Image.Image, orientation: int, full_w: int, sx: float) -> Image.Image:
    """The decoded picture fine enough for a card photo at ``sx`` output pixels per source
    pixel: ``raw`` if it is (a PNG always is), else the JPEG decoded again at that scale (the
    card photo is then upscaled at most UPSCALE_SLACK from it)."""
    factor = full_w / _upright_width(raw, orientation)  # source pixels per raw pixel
    if factor <= 1.0 or sx * factor <= UPSCALE_SLACK:
        return raw
    return _decode(data, min(1.0, sx / UPSCALE_SLACK))


def _cut(
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
    return _upright(src.resize(ssize, resample, box=sbox, reducing_gap=3.0), orientation)


def _grey_part(
    img: Image.Image, orientation: int, full_w: int, box: tuple[int, int, int, int], k: float
) -> np.ndarray:
    """Grey pixels of a detection box (x, y, w, h; ``k`` source pixels per detection pixel)
    cut from ``img`` (stored orientation), upright, at most twice EYE_FACE_WIDTHS wide."""
    g = full_w / _upright_width(img, orientation)  # source pixels per img pixel
    uw = _upright_width(img, orientation)
    uh = img.width if orientation in (5, 6, 7, 8) else img.height
    x, y, w, h = (v * k / g for v in box)
    ub = (max(0.0, x), max(0.0, y), min(float(uw), x + w), min(float(uh), y + h))
    bw, bh = ub[2] - ub[0], ub[3] - ub[1]
    side = min(2 * max(EYE_FACE_WIDTHS), max(1, round(bw)))
    size = (side, max(1, round(side * bh / max(1.0, bw))))
    return np.asarray(_cut(img, orientation, ub, size, Image.Resampling.BOX).convert("L"))


def _min_alpha(alpha: Image.Image) -> int:
    low = alpha.getextrema()[0]
    assert isinstance(low, int)
    return low


def _transparent() -> PhotoRejected:
    return reject(
        PhotoProblem.TRANSPARENT,
        "the picture is partly transparent where the card photo is taken from: send an opaque "
        "photograph",
    )


def _render(
    raw: Image.Image,
    orientation: int,
    crop: tuple[float, float, float, float],
    full: tuple[int, int],
    pads: dict[str, tuple[int, int, int]],
    settings: PhotoSettings,
) -> Image.Image:
    """The card photo: the crop's part inside the picture, resampled from ``raw`` (decoded
    fine enough) and colour-converted alone, on a canvas whose padded bands have ``pads``
    colours."""
    out_w, out_h = settings.width, settings.height
    full_w, full_h = full
    left, top, right, bottom = crop
    sx, sy = out_w / (right - left), out_h / (bottom - top)
    inner = (max(0.0, left), max(0.0, top), min(float(full_w), right), min(float(full_h), bottom))
    turned = orientation in (5, 6, 7, 8)
    raw_w = raw.height if turned else raw.width
    factor = full_w / raw_w  # source pixels per raw pixel
    raw_h = raw.width if turned else raw.height
    rb = tuple(v / factor for v in inner)
    rb = (max(0.0, rb[0]), max(0.0, rb[1]), min(float(raw_w), rb[2]), min(float(raw_h), rb[3]))
    dest = (
        round((inner[0] - left) * sx),
        round((inner[1] - top) * sy),
        round((inner[2] - left) * sx),
        round((inner[3] - top) * sy),
    )
    size = (max(1, dest[2] - dest[0]), max(1, dest[3] - dest[1]))
    # resampled first, colour-converted after: only the card-sized part is ever converted
    scaled, alpha = _to_srgb(_cut(raw, orientation, rb, size, Image.Resampling.LANCZOS))
    if alpha is not None and _min_alpha(alpha) < 255:
        raise _transparent()
    canvas = Image.new("RGB", (out_w, out_h), (255, 255, 255))
    bands = {
        "left": (0, 0, dest[0], out_h),
        "right": (dest[2], 0, out_w, out_h),
        "top": (0, 0, out_w, dest[1]),
        "bottom": (0, dest[3], out_w, out_h),
    }
    for edge in ("left", "right", "top", "bottom"):
        if edge in pads:
            canvas.paste(pads[edge], bands[edge])
    canvas.paste(scaled, dest[:2])
    return canvas
