"""The face code: what was printed on a card, as a QR code on its back, read back for the
quality check.

Design notes: ``docs/design/printers.md`` (section ``printers.facecode``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path

from PIL import Image

from printers.errors import PrinterError

FORMAT = "YKT-FACE/1"
PHOTO_DIGEST_HEX = 32


class FaceCodeError(PrinterError):
    """The face code cannot be made or read back (``reason`` says which)."""

    code = "face_code_error"


@dataclass(frozen=True)
class FaceData:
    """What is printed on a card (and what its face code says)."""

    card_number: str
    ssn: str
    name: str
    issue_date: date
    region: str
    validity: str
    photo_sha256: str | None
    """Hex SHA-256 of the photo JPEG printed, its first :data:`PHOTO_DIGEST_HEX` characters
    (None: a card without photo)."""

    def __post_init__(self) -> None:
        if self.photo_sha256:
            object.__setattr__(self, "photo_sha256", self.photo_sha256[:PHOTO_DIGEST_HEX].lower())

    def payload(self) -> str:
        fields = {
            "c": self.card_number,
            "s": self.ssn,
            "n": self.name,
            "d": self.issue_date.isoformat(),
            "r": self.region,
            "v": self.validity,
            "p": (self.photo_sha256 or "")[:PHOTO_DIGEST_HEX],
        }
        return f"{FORMAT} " + json.dumps(fields, ensure_ascii=True, separators=(",", ":"))

    def digest(self) -> str:
        """SHA-256 of the payload (stored on the batch item as what was printed)."""
        return hashlib.sha256(self.payload().encode("ascii")).hexdigest()

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def parse_payload(text: str) -> FaceData:
    """The :class:`FaceData` of a decoded face code; raises :class:`FaceCodeError`."""
    prefix, _, body = text.partition(" ")
    if prefix != FORMAT:
        raise FaceCodeError(f"not a {FORMAT} face code: {text[:40]!r}")
    try:
        obj = json.loads(body)
        return FaceData(
            card_number=str(obj["c"]),
            ssn=str(obj["s"]),
            name=str(obj["n"]),
            issue_date=date.fromisoformat(str(obj["d"])),
            region=str(obj["r"]),
            validity=str(obj["v"]),
            photo_sha256=str(obj["p"]) or None,
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise FaceCodeError(f"malformed face code ({exc!r})") from None


def render_code(face: FaceData, size_px: int) -> Image.Image:
    """The QR code of ``face`` as a square greyscale image of ``size_px`` pixels, drawn with
    whole pixels per module (no resampling: it scans as printed)."""
    import segno

    qr = segno.make(face.payload(), error="m", mode="byte", micro=False, boost_error=False)
    border = 4  # the quiet zone ISO/IEC 18004 asks for
    modules = int(qr.symbol_size(scale=1, border=border)[0])
    scale = size_px // modules
    if scale < 1:
        raise FaceCodeError(
            f"face code needs {modules} px, the layout box has {size_px} (raise the dpi)"
        )
    from PIL import ImageDraw

    img = Image.new("L", (size_px, size_px), 255)
    draw = ImageDraw.Draw(img)
    offset = (size_px - int(modules) * scale) // 2 + border * scale
    for y, row in enumerate(qr.matrix):
        for x, dark in enumerate(row):
            if dark:
                x0, y0 = offset + x * scale, offset + y * scale
                draw.rectangle((x0, y0, x0 + scale - 1, y0 + scale - 1), fill=0)
    return img


def decode_image(image: Image.Image, box: tuple[int, int, int, int] | None = None) -> FaceData:
    """Find and decode the face code in ``image`` (the card back), optionally only in ``box``
    (left, top, right, bottom, pixels; a margin is added); raises :class:`FaceCodeError`."""
    import cv2
    import numpy as np

    grey = image.convert("L")
    if box is not None:
        left, top, right, bottom = box
        margin = max(8, (right - left) // 8)
        grey = grey.crop(
            (max(0, left - margin), max(0, top - margin),
             min(grey.width, right + margin), min(grey.height, bottom + margin))
        )  # fmt: skip
    array = np.asarray(grey, dtype=np.uint8)
    text = ""
    # OpenCV's finder misses a few codes at one scale: try the crop as is, enlarged, and the
    # ArUco-based detector before giving up
    for detector_cls in (cv2.QRCodeDetector, getattr(cv2, "QRCodeDetectorAruco", None)):
        if detector_cls is None:
            continue
        detector = detector_cls()
        for factor in (1, 2, 3):
            candidate = (
                array
                if factor == 1
                else cv2.resize(array, None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST)
            )
            text, _, _ = detector.detectAndDecode(candidate)
            if text:
                break
        if text:
            break
    if not text:
        raise FaceCodeError("no readable face code on the printed card back")
    return parse_payload(text)


def decode_file(path: Path, box: tuple[int, int, int, int] | None = None) -> FaceData:
    """:func:`decode_image` of a PNG file (the spooled back of a card)."""
    try:
        with Image.open(path) as img:
            img.load()
            return decode_image(img, box)
    except OSError as exc:
        raise FaceCodeError(f"cannot read the printed card back {path}: {exc}") from exc
