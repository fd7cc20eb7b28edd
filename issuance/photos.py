"""Holder photos: check a submitted picture and turn it into the card's photo file.

Design notes: ``docs/design/issuance.md`` (section ``issuance.photos``).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from PIL import (
    Image,
)

from issuance.errors import PhotoRejected
from issuance.photo_files import (
    HEADER_ERRORS,
    PhotoProblem,
    cut,
    decode,
    encode_in_band,
    min_alpha,
    open_picture,
    orientation_of,
    pictures,
    reduce_by,
    reject,
    to_srgb,
    transparent,
    upright,
    upright_width,
)
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
EYE_FACE_WIDTHS = (100, 128, 160)
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
    # strongest first; ties by size then position (a deterministic order whatever the threads)
    return sorted(found, key=lambda c: (-c[1], -c[0][2], c[0][0], c[0][1]))


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


# --- the pipeline -----------------------------------------------------------------------------
def process_photo(
    data: bytes, settings: PhotoSettings, *, detector: Detector = DETECTOR
) -> ProcessedPhoto:
    """Check a submitted photo and produce the card photo; raise PhotoRejected with a reason."""
    try:
        return _process(data, settings, detector)
    except PhotoRejected:
        raise
    except (*HEADER_ERRORS, cv2.error) as exc:
        # a decoder or library choking on hostile input: still a reason, never a crash
        raise reject(PhotoProblem.CORRUPT, f"the image could not be processed ({exc})") from exc


def _process(data: bytes, settings: PhotoSettings, det: Detector) -> ProcessedPhoto:
    out_w, out_h = settings.width, settings.height
    header = open_picture(data)
    orientation = orientation_of(header)
    full_w, full_h = _check_size(header, orientation, settings)
    source_format, notes = str(header.format), []
    count = pictures(header)
    if count > 1:
        source_format = "MPO"
        notes.append(f"MPO file of {count} pictures: the first picture was used")
    raw = decode(data, min(1.0, DECODE_SIDE / min(full_w, full_h)))
    # the checks' copy: integer reduction to a short side of about WORK_SIDE, upright, sRGB
    work_img, alpha = to_srgb(
        upright(reduce_by(raw, max(1, min(raw.size) // WORK_SIDE)), orientation)
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
                if min(raw.size) >= 1.9 * WORK_SIDE or upright_width(raw, orientation) >= full_w
                else decode(data, min(1.0, 2 * WORK_SIDE / min(full_w, full_h)))
            )
            finer = reduce_by(finer, max(1, min(finer.size) // (2 * WORK_SIDE)))
            gray = np.asarray(to_srgb(upright(finer, orientation))[0].convert("L"))
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
            or min_alpha(alpha) == 255
            or exc.details["reason"]
            in (
                PhotoProblem.SEVERAL_FACES,
                PhotoProblem.TOO_DARK,
            )
        ):
            raise
        # the face is not seen on the flattened picture: the transparency is the reason
        raise transparent() from exc
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


def _fine(data: bytes, raw: Image.Image, orientation: int, full_w: int, sx: float) -> Image.Image:
    """The decoded picture fine enough for a card photo at ``sx`` output pixels per source
    pixel: ``raw`` if it is (a PNG always is), else the JPEG decoded again at that scale (the
    card photo is then upscaled at most UPSCALE_SLACK from it)."""
    factor = full_w / upright_width(raw, orientation)  # source pixels per raw pixel
    if factor <= 1.0 or sx * factor <= UPSCALE_SLACK:
        return raw
    return decode(data, min(1.0, sx / UPSCALE_SLACK))


def _grey_part(
    img: Image.Image, orientation: int, full_w: int, box: tuple[int, int, int, int], k: float
) -> np.ndarray:
    """Grey pixels of a detection box (x, y, w, h; ``k`` source pixels per detection pixel)
    cut from ``img`` (stored orientation), upright, at most twice EYE_FACE_WIDTHS wide."""
    g = full_w / upright_width(img, orientation)  # source pixels per img pixel
    uw = upright_width(img, orientation)
    uh = img.width if orientation in (5, 6, 7, 8) else img.height
    x, y, w, h = (v * k / g for v in box)
    ub = (max(0.0, x), max(0.0, y), min(float(uw), x + w), min(float(uh), y + h))
    bw, bh = ub[2] - ub[0], ub[3] - ub[1]
    side = min(2 * max(EYE_FACE_WIDTHS), max(1, round(bw)))
    size = (side, max(1, round(side * bh / max(1.0, bw))))
    return np.asarray(cut(img, orientation, ub, size, Image.Resampling.BOX).convert("L"))


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
    scaled, alpha = to_srgb(cut(raw, orientation, rb, size, Image.Resampling.LANCZOS))
    if alpha is not None and min_alpha(alpha) < 255:
        raise transparent()
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
