"""Holder photos: check a submitted picture and turn it into the card's photo file.

``process_photo(data, settings)`` accepts a JPEG or PNG from a counter camera, a scanner or a
phone and either returns a :class:`ProcessedPhoto` (a baseline JPEG of exactly
``settings.width`` x ``settings.height`` pixels, 24-bit RGB on white, no metadata, whose size lies
in ``[settings.min_bytes, settings.max_bytes]``) or raises
:class:`issuance.errors.PhotoRejected` with one precise reason. The reason's code
(:class:`PhotoProblem`) is in ``error.details["reason"]``; the human text is in
``error.problems[0].reason``.

What is checked, in this order (the first failure is reported):

1. *The file*: not empty; a JPEG or PNG (by content, not by name); its header's pixel count is at
   most ``settings.max_input_pixels`` (decompression bombs are refused before decoding); it
   decodes completely (a truncated file is refused, never half-used).
2. *The pixels*: EXIF orientation is applied (``ImageOps.exif_transpose``); CMYK and embedded
   ICC profiles are converted to sRGB with LittleCMS; 16-bit images are scaled to 8 bits;
   palette images are expanded; alpha is flattened on white. Bilevel (1-bit) and float images
   are refused: they are not photographs.
3. *One face*: OpenCV's bundled Haar cascade ``haarcascade_frontalface_default.xml`` on a
   grey image ``DETECT_WIDTH`` px wide; faces narrower than ``DETECT_MIN_FRACTION`` of the
   short side are not looked for (a portrait's face is much larger). None -> ``no_face``.
   A candidate counts as a face only if it passes check 4 or the detector is very sure of it
   (so that a weak false detection in a shirt's folds does not make "two faces", while a
   second person in glasses does); more than one such face -> ``several_faces``; candidates
   but none frontal -> ``not_frontal``.
4. *Facing the camera*: inside the upper part of the face box both eyes must be found (the
   union of OpenCV's four eye cascades: plain, with glasses, left and right "2splits"), one
   on each side of the box's centre line; the line through them may tilt at most
   ``MAX_TILT_DEG`` and their midpoint may be off the box's centre by at most
   ``MAX_EYE_OFFSET`` of the box width (a turned head moves the eyes to one side). This is a
   heuristic, not a pose estimator.
5. *Resolution* (checked on the strongest candidate, before 4): the face box must be at least
   ``FACE_FRACTION * width / MAX_UPSCALE`` source pixels wide, i.e. the output may be
   upscaled at most ``MAX_UPSCALE`` times.
6. *Framing*: the ID-photo crop (face box ``FACE_FRACTION`` of the width, its centre at
   ``FACE_CENTRE_Y`` of the height) must lie inside the picture, with a tolerance of
   ``EDGE_TOLERANCE`` of the crop size (shoulders cut by the bottom edge are tolerated up to
   ``BOTTOM_TOLERANCE``); the crop is never padded, so that no background is invented.
7. *Background*: in the cropped picture, the band above the head and the two bands beside it
   must be light (median luminance >= ``BG_MIN_LUMA``) and plain (luminance standard deviation
   <= ``BG_MAX_STD`` and mean gradient <= ``BG_MAX_GRADIENT``).
8. *Sharpness* (checked right after 5, on the decoded picture): the variance of the Laplacian
   of the face, resampled to 128x128, must be at least ``MIN_SHARPNESS``.

Encoding: the size band is a rule about the *file* (the card centres' "20-100 KB electronic
photo"). The largest JPEG quality in [``MIN_QUALITY``, 95] whose file fits under ``max_bytes``
is chosen by bisection with 4:2:0 chroma subsampling; if even quality 95 is below ``min_bytes``
the search is repeated with 4:4:4 subsampling up to quality 100; if that is still too small the
picture has too little detail to be a usable photograph (blank or blown out) and is refused
(``too_little_detail``). Nothing is ever padded into the file. If even ``MIN_QUALITY`` is above
``max_bytes`` the photo is refused as too noisy.

Speed: JPEGs are decoded with libjpeg's DCT scaling (Pillow's ``draft``) to about 1000 px, which
is enough for the crop unless the face is small in a large frame, in which case the file is
decoded again at the scale the crop needs.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import threading
import warnings
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from issuance.errors import FieldProblem, PhotoRejected
from issuance.settings import PhotoSettings

#: Face box (Haar) width as a fraction of the output width.
FACE_FRACTION = 0.44
#: Vertical position of the face box centre, as a fraction of the output height from the top.
FACE_CENTRE_Y = 0.42
#: The output may be at most this many times larger than the source around the face.
MAX_UPSCALE = 2.0
#: How far the crop may stick out of the picture (fraction of the crop size) before refusing.
EDGE_TOLERANCE = 0.02
BOTTOM_TOLERANCE = 0.12
#: Background limits (luminance 0..255).
BG_MIN_LUMA = 150.0
BG_MAX_STD = 30.0
BG_MAX_GRADIENT = 12.0
#: Variance of the Laplacian of the face resampled to 128x128.
MIN_SHARPNESS = 60.0
#: Frontal-pose limits.
MAX_TILT_DEG = 15.0
MAX_EYE_OFFSET = 0.15
#: Haar detector neighbour counts: least for a candidate, and "sure it is a face" without eyes.
MIN_NEIGHBOURS = 5
STRONG_NEIGHBOURS = 10
#: Width of the grey image the face detector runs on.
DETECT_WIDTH = 400
#: Detector scale step and the least face size as a fraction of the short side (speed knobs).
DETECT_SCALE_STEP = 1.2
DETECT_MIN_FRACTION = 1 / 7
#: Long side the JPEG is first decoded to (DCT scaling picks the next power-of-two reduction).
FIRST_DECODE_MIN_SIDE = 700
MIN_QUALITY = 40
SUPPORTED_FORMATS = ("JPEG", "PNG")


class PhotoProblem(StrEnum):
    """Why a photo was refused (``PhotoRejected.details["reason"]``)."""

    EMPTY = "empty"
    NOT_AN_IMAGE = "not_an_image"
    UNSUPPORTED_FORMAT = "unsupported_format"
    TOO_MANY_PIXELS = "too_many_pixels"
    CORRUPT = "corrupt"
    UNSUPPORTED_MODE = "unsupported_mode"
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
    #: "JPEG" or "PNG": the submitted file's format.
    source_format: str


def reject(problem: PhotoProblem, text: str) -> PhotoRejected:
    """Build the error for one reason (callers ``raise reject(...)``)."""
    err = PhotoRejected(f"photo rejected: {text}", problems=[FieldProblem("photo", text)])
    err.details["reason"] = problem.value
    return err


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


# --- decoding ---------------------------------------------------------------------------------
def _open(data: bytes) -> Image.Image:
    if not data:
        raise reject(PhotoProblem.EMPTY, "the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise reject(PhotoProblem.TOO_MANY_PIXELS, f"the image is far too large ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise reject(
            PhotoProblem.NOT_AN_IMAGE, "the file is not an image (JPEG or PNG expected)"
        ) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise reject(PhotoProblem.CORRUPT, f"the image header is damaged ({exc})") from exc
    if img.format not in SUPPORTED_FORMATS:
        raise reject(
            PhotoProblem.UNSUPPORTED_FORMAT,
            f"{img.format} images are not accepted (JPEG or PNG expected)",
        )
    return img


def _check_pixels(img: Image.Image, settings: PhotoSettings) -> None:
    w, h = img.size
    if w <= 0 or h <= 0:
        raise reject(PhotoProblem.CORRUPT, "the image has no pixels")
    if w * h > settings.max_input_pixels:
        raise reject(
            PhotoProblem.TOO_MANY_PIXELS,
            f"the image is {w}x{h} = {w * h:,} pixels, more than the "
            f"{settings.max_input_pixels:,} allowed",
        )


def _decode(data: bytes, scale: float) -> Image.Image:
    """Open and fully decode, with JPEG DCT scaling to at least ``scale`` of the size."""
    img = _open(data)
    if img.format == "JPEG" and scale < 1.0:
        w, h = img.size
        img.draft("RGB", (max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale))))
    try:
        img.load()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise reject(
            PhotoProblem.CORRUPT, f"the image data is truncated or damaged ({exc})"
        ) from exc
    return img


def _to_srgb(img: Image.Image) -> Image.Image:
    """Upright, 8-bit, sRGB, alpha flattened on white."""
    # unreadable EXIF: keep the stored orientation
    with contextlib.suppress(OSError, ValueError, SyntaxError, TypeError, KeyError):
        img = ImageOps.exif_transpose(img) or img
    mode = img.mode
    if mode in ("1", "F"):
        raise reject(
            PhotoProblem.UNSUPPORTED_MODE,
            "bilevel (1-bit) image: a greyscale or colour photograph is needed"
            if mode == "1"
            else "floating-point image: an 8- or 16-bit photograph is needed",
        )
    if mode.startswith("I"):  # 16-bit or 32-bit integer greyscale
        arr = np.asarray(img).astype(np.float64)
        peak = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        img = Image.fromarray(np.clip(arr * (255.0 / peak) + 0.5, 0, 255).astype(np.uint8), "L")
        mode = "L"
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
    if img.mode == "RGBA":
        flat = Image.new("RGB", img.size, (255, 255, 255))
        flat.paste(img, mask=img.getchannel("A"))
        img = flat
    elif img.mode != "RGB":
        try:
            img = img.convert("RGB")
        except ValueError as exc:
            raise reject(
                PhotoProblem.UNSUPPORTED_MODE, f"image mode {img.mode} cannot be converted"
            ) from exc
    return img


# --- checks -----------------------------------------------------------------------------------
def _detect_faces(gray: np.ndarray) -> list[tuple[tuple[int, int, int, int], int]]:
    """Face candidates with their neighbour counts (detector confidence), strongest first."""
    face_cascade, _ = _cascades()
    h, w = gray.shape
    min_side = max(24, int(min(w, h) * DETECT_MIN_FRACTION))
    faces, neighbours = face_cascade.detectMultiScale2(
        gray,
        scaleFactor=DETECT_SCALE_STEP,
        minNeighbors=MIN_NEIGHBOURS,
        minSize=(min_side, min_side),
    )
    found = [
        ((int(x), int(y), int(fw), int(fh)), int(n))
        for (x, y, fw, fh), n in zip(faces, neighbours, strict=True)
    ]
    if not found:
        raise reject(PhotoProblem.NO_FACE, "no face was found")
    return sorted(found, key=lambda c: -c[1])


def _check_frontal(gray: np.ndarray, box: tuple[int, int, int, int]) -> None:
    _, eye_cascades = _cascades()
    x, y, w, h = box
    roi = gray[y : y + int(h * 0.6), x : x + w]
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


def _the_face(gray: np.ndarray, min_face: float, px_per_det: float) -> tuple[int, int, int, int]:
    """The one frontal face.

    A candidate counts as a face if both eyes are found in it or if the detector is very sure
    (``STRONG_NEIGHBOURS``): a weak detection in a shirt's folds is not a second face, but a
    second person wearing glasses is. ``min_face`` is the least face width in source pixels;
    ``px_per_det`` source pixels per pixel of ``gray``.
    """
    candidates = _detect_faces(gray)
    strongest = candidates[0][0][2] * px_per_det
    if strongest < min_face:
        raise reject(
            PhotoProblem.FACE_TOO_SMALL,
            f"the face is {strongest:.0f} pixels wide, at least {min_face:.0f} needed: "
            "come closer to the camera or use a higher resolution",
        )
    frontal: list[tuple[int, int, int, int]] = []
    faces = 0
    first_error: PhotoRejected | None = None
    for box, neighbours in candidates:
        try:
            _check_frontal(gray, box)
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


def _crop_box(
    face: tuple[float, float, float, float], img_w: int, img_h: int, out_w: int, out_h: int
) -> tuple[float, float, float, float]:
    """ID-photo crop (left, top, right, bottom) in source pixels for a face box."""
    fx, fy, fw, fh = face
    crop_w = fw / FACE_FRACTION
    crop_h = crop_w * out_h / out_w
    left = fx + fw / 2.0 - crop_w / 2.0
    top = fy + fh / 2.0 - FACE_CENTRE_Y * crop_h
    right, bottom = left + crop_w, top + crop_h
    tol_x, tol_y = EDGE_TOLERANCE * crop_w, EDGE_TOLERANCE * crop_h
    if left < -tol_x or right > img_w + tol_x:
        raise reject(
            PhotoProblem.BAD_FRAMING,
            "the face is too close to the left or right edge: the whole head and some "
            "background on both sides must be in the picture",
        )
    if top < -tol_y:
        raise reject(
            PhotoProblem.BAD_FRAMING,
            "the face is too close to the top edge: leave space above the head",
        )
    if bottom > img_h + BOTTOM_TOLERANCE * crop_h:
        raise reject(
            PhotoProblem.BAD_FRAMING,
            "the face is too close to the bottom edge: the picture must show the shoulders",
        )
    # within tolerance: slide the crop inside (never pad: no invented background)
    dx = -left if left < 0 else (img_w - right if right > img_w else 0.0)
    dy = -top if top < 0 else (img_h - bottom if bottom > img_h else 0.0)
    left, right, top, bottom = left + dx, right + dx, top + dy, bottom + dy
    if top < 0 or left < 0 or right > img_w + 0.5:
        raise reject(PhotoProblem.BAD_FRAMING, "the face is too large for the picture")
    return left, top, right, bottom


def _check_background(gray: np.ndarray) -> None:
    h, w = gray.shape
    top = gray[: max(2, int(h * 0.07)), :]
    side_rows = slice(int(h * 0.07), int(h * 0.42))
    sides = [gray[side_rows, : max(2, int(w * 0.10))], gray[side_rows, w - max(2, int(w * 0.10)) :]]
    regions = [top, *sides]
    pixels = np.concatenate([r.reshape(-1) for r in regions]).astype(np.float64)
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
                np.mean(np.abs(np.diff(r.astype(np.float64), axis=1)))
                + np.mean(np.abs(np.diff(r.astype(np.float64), axis=0)))
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


def _check_sharpness(img: Image.Image, box: tuple[float, float, float, float]) -> float:
    """Variance of the Laplacian of the face (``box`` = left, top, right, bottom in ``img``)."""
    left, top, right, bottom = (round(v) for v in box)
    face_img = img.crop((left, top, right, bottom)).convert("L")
    face = cv2.resize(np.asarray(face_img), (128, 128), interpolation=cv2.INTER_AREA)
    value = float(cv2.Laplacian(face, cv2.CV_64F).var())
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
def process_photo(data: bytes, settings: PhotoSettings) -> ProcessedPhoto:
    """Check a submitted photo and produce the card photo; raise PhotoRejected with a reason."""
    try:
        return _process(data, settings)
    except PhotoRejected:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, cv2.error) as exc:
        # a decoder or library choking on hostile input: still a reason, never a crash
        raise reject(PhotoProblem.CORRUPT, f"the image could not be processed ({exc})") from exc


def _process(data: bytes, settings: PhotoSettings) -> ProcessedPhoto:
    out_w, out_h = settings.width, settings.height
    header = _open(data)
    source_format = str(header.format)
    _check_pixels(header, settings)
    full_w, full_h = header.size
    scale = min(1.0, FIRST_DECODE_MIN_SIDE / max(1, min(full_w, full_h)))
    img = _to_srgb(_decode(data, scale))
    # sizes after EXIF transposition (a 90-degree turn swaps them)
    dec_w, dec_h = img.size
    upright_full = (full_w, full_h) if (dec_w >= dec_h) == (full_w >= full_h) else (full_h, full_w)
    factor = upright_full[0] / dec_w  # full-resolution pixels per decoded pixel

    det_scale = min(1.0, DETECT_WIDTH / dec_w)
    small = (
        img
        if det_scale >= 1.0
        else img.resize(
            (max(1, round(dec_w * det_scale)), max(1, round(dec_h * det_scale))),
            Image.Resampling.BILINEAR,
            reducing_gap=2.0,
        )
    )
    gray = np.asarray(small.convert("L"))
    k = factor / det_scale  # full-resolution pixels per detection pixel
    box = _the_face(gray, FACE_FRACTION * out_w / MAX_UPSCALE, k)
    face_full = (box[0] * k, box[1] * k, box[2] * k, box[3] * k)
    d = 1.0 / det_scale  # decoded pixels per detection pixel
    _check_sharpness(img, (box[0] * d, box[1] * d, (box[0] + box[2]) * d, (box[1] + box[3]) * d))
    crop_full = _crop_box(face_full, upright_full[0], upright_full[1], out_w, out_h)
    crop_w_dec = (crop_full[2] - crop_full[0]) / factor
    if crop_w_dec < out_w and factor > 1.0:
        # the draft decode is too coarse for this crop: decode at the scale it needs
        need = min(1.0, out_w / (crop_full[2] - crop_full[0]) * 1.05)
        img = _to_srgb(_decode(data, need))
        factor = upright_full[0] / img.size[0]
    iw, ih = img.size
    crop_dec = (
        max(0.0, crop_full[0] / factor),
        max(0.0, crop_full[1] / factor),
        min(float(iw), crop_full[2] / factor),
        min(float(ih), crop_full[3] / factor),
    )
    photo = img.resize(
        (out_w, out_h),
        Image.Resampling.LANCZOS,
        box=crop_dec,
        reducing_gap=3.0,
    )
    sx = out_w / (crop_full[2] - crop_full[0])
    sy = out_h / (crop_full[3] - crop_full[1])
    face_box = (
        round((face_full[0] - crop_full[0]) * sx),
        round((face_full[1] - crop_full[1]) * sy),
        round((face_full[0] + face_full[2] - crop_full[0]) * sx),
        round((face_full[1] + face_full[3] - crop_full[1]) * sy),
    )
    out_gray = np.asarray(photo.convert("L"))
    _check_background(out_gray)
    jpeg = encode_in_band(photo, settings)
    return ProcessedPhoto(
        jpeg=jpeg,
        width=out_w,
        height=out_h,
        face_box=face_box,
        sha256=hashlib.sha256(jpeg).hexdigest(),
        source_format=source_format,
    )
