"""Receipts as paper: the one-page PDF of a fee, deposit or refund receipt.

The domain (:mod:`issuance.services.cash`) decides what a receipt says and numbers it; this
module only lays the words out (A6 portrait at 150 dpi, Pillow, the card faces' CJK font) so a
counter prints it on the file spool or CUPS like any other document. The same receipt gives the
same bytes: the PDF's dates are fixed, as :mod:`printers.spool` does.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass

from PIL import Image, ImageDraw

from printers.faces import face_font

#: Fixed PDF dates (as printers.spool does): the same receipt gives the same bytes.
_EPOCH_2000 = time.gmtime(946_684_800)
#: A6 portrait at 150 dpi.
PAGE_PX = (620, 874)
DPI = 150.0
TITLES = {
    "fee": "收费收据 RECEIPT (FEE)",
    "deposit": "押金收据 RECEIPT (DEPOSIT)",
    "refund": "退款凭证 REFUND",
}


@dataclass(frozen=True)
class ReceiptText:
    """What a receipt says, each value already as it is shown (time in the issuer's zone with
    its offset, amount in yuan, the ID number masked)."""

    issuer: str
    kind: str  # fee, deposit or refund
    number: str
    counter: str
    time: str
    what: str
    card_number: str
    holder: str
    amount: str
    staff: str


def receipt_pdf(r: ReceiptText) -> bytes:
    """The receipt as a one-page PDF."""
    w, h = PAGE_PX
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    lines = [
        (r.issuer, True, 26),
        (TITLES[r.kind], True, 30),
        (f"No. {r.number}", True, 24),
        (f"counter 窗口: {r.counter}", False, 22),
        (f"time 时间: {r.time}", False, 22),
        (f"for 项目: {r.what}", False, 22),
        (f"card 卡号: {r.card_number}", False, 22),
        (f"holder 姓名: {r.holder}", False, 22),
        (f"amount 金额: {r.amount}", True, 30),
        (f"staff 经办: {r.staff}", False, 22),
    ]
    y = 40
    for text, bold, size in lines:
        draw.text((40, y), text, fill="black", font=face_font(bold, size))
        y += size + 26
    buf = io.BytesIO()
    img.save(buf, "PDF", resolution=DPI, title=r.number, creationDate=_EPOCH_2000,
             modDate=_EPOCH_2000)  # fmt: skip
    return buf.getvalue()
