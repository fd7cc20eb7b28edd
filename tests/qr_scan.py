"""What a counter's or a hospital's QR scanner reads from an image, for the e-card tests.

zxing-cpp (not segno, the library that drew the code), set to QR codes only, as a scanner for
the e-card is set up (docs/design/ecard.md, "Scanning"). With every symbology on, zxing-cpp
3.1 also finds a false four-character Codabar or ITF inside about one QR code in 750 (4 of
3,000 random codes measured; CI run 27 failed on one), so "every format" is not a scanner
anyone points at an e-card.
"""

from __future__ import annotations

import io
from pathlib import Path

import zxingcpp
from PIL import Image


def scan_qr(image: bytes | Path | Image.Image) -> list[str]:
    """The texts of the QR codes found in a PNG (bytes or file) or an image, in reading order."""
    if isinstance(image, bytes):
        image = Image.open(io.BytesIO(image))
    elif isinstance(image, Path):
        image = Image.open(image)
    found = zxingcpp.read_barcodes(image, formats=zxingcpp.BarcodeFormat.QRCode)
    assert all(f.format == zxingcpp.BarcodeFormat.QRCode for f in found)
    return [str(f.text) for f in found]
