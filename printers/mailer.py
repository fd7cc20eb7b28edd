"""The sealed PIN mailer: a one-page letter (A5 portrait) whose PINs sit only in a tear-off
strip at the foot of the page, printed over a dense security pattern (the strip is folded in
and sealed, or covered by a scratch-off label, before posting: the PIN cannot be read through
the envelope's window or the paper).

:func:`render_pin_mailer` draws the page and says where everything went (:class:`MailerPage`:
the tear-off box and each PIN's box), so a test can check the PIN lies inside the strip;
:func:`mailer_pdf` is the PDF handed to a :class:`printers.spool.DocumentPrinter` (file spool,
owner-only, or CUPS). The PINs are never logged: ``MailerText.__repr__`` hides them.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, field

from PIL import Image, ImageDraw

from printers.faces import face_font
from printers.spool import EPOCH_2000

#: A5 portrait at 150 dpi.
PAGE_PX = (874, 1240)
DPI = 150.0
#: The tear-off strip: the bottom of the page below the perforation.
TEAR_OFF_TOP = 860


@dataclass(frozen=True)
class MailerText:
    """What a PIN mailer says. ``pins``: (label, PIN) pairs, printed in the tear-off strip."""

    issuer: str
    holder_name: str
    address: str
    card_number_masked: str
    reference: str
    pins: tuple[tuple[str, str], ...] = field(repr=False)

    def __repr__(self) -> str:  # PINs and address stay out of logs
        return f"MailerText(card={self.card_number_masked}, reference={self.reference})"


@dataclass(frozen=True)
class MailerPage:
    """The drawn page and where its parts are (pixels: left, top, right, bottom)."""

    image: Image.Image
    tear_off: tuple[int, int, int, int]
    pin_boxes: tuple[tuple[int, int, int, int], ...]


def mask_card_number(number: str) -> str:
    """The card number as a mailer shows it: first two and last three characters."""
    if len(number) <= 5:
        return "*" * len(number)
    return number[:2] + "*" * (len(number) - 5) + number[-3:]


def _security_pattern(img: Image.Image, box: tuple[int, int, int, int], seed: str) -> None:
    """Dense grey digits and hatching behind the PIN (hides it from a light held behind),
    drawn within ``box`` only."""
    rng = random.Random(seed)
    left, top, right, bottom = box
    w, h = right - left, bottom - top
    tile = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(tile)
    font = face_font(False, 18)
    for y in range(0, h, 16):
        row = "".join(rng.choice("0123456789") for _ in range(w // 9))
        draw.text((0, y), row, fill=(150, 150, 150), font=font)
    for x in range(-h, w, 9):
        draw.line((x, h, x + h, 0), fill=(120, 120, 120), width=1)
    img.paste(tile, (left, top))


def render_pin_mailer(text: MailerText) -> MailerPage:
    """Draw the mailer: letter head, the holder's name and address (for a window envelope),
    the masked card number and instructions above the perforation; the PINs below it."""
    w, h = PAGE_PX
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    y = 40
    for line, bold, size in (
        (text.issuer, True, 24),
        ("社会保障卡密码函  PIN MAILER", True, 30),
        (f"No. {text.reference}", False, 20),
    ):
        draw.text((50, y), line, fill="black", font=face_font(bold, size))
        y += size + 18
    # the window envelope's address block
    y += 20
    draw.rectangle((44, y - 8, 560, y + 150), outline=(160, 160, 160))
    draw.text((60, y), text.holder_name, fill="black", font=face_font(True, 26))
    for i, part in enumerate(_wrap(text.address, 22)[:3]):
        draw.text((60, y + 42 + i * 32), part, fill="black", font=face_font(False, 22))
    y += 190
    for line in (
        f"卡号 card: {text.card_number_masked}",
        "初始密码在下方撕开联内。首次使用前请修改密码。",
        "Your initial PINs are in the sealed strip below. Change them before first use;",
        "never write them down or tell anyone, staff included.",
        "初始密码若被拆看，请立即到经办网点办理密码重置。",
        "If the strip was opened, have the PIN reset at a counter at once.",
    ):
        draw.text((50, y), line, fill="black", font=face_font(False, 20))
        y += 38
    # the perforation and the tear-off strip
    for x in range(30, w - 30, 24):
        draw.line((x, TEAR_OFF_TOP, x + 12, TEAR_OFF_TOP), fill="black", width=2)
    draw.text((50, TEAR_OFF_TOP + 10), "✂ 沿虚线撕开 tear along the line · 密封联 sealed strip",
              fill="black", font=face_font(False, 18))  # fmt: skip
    tear_off = (30, TEAR_OFF_TOP + 2, w - 30, h - 30)
    boxes = []
    top = TEAR_OFF_TOP + 60
    for label, pin in text.pins:
        box = (60, top, w - 60, top + 120)
        _security_pattern(img, box, text.reference + label)
        draw.rectangle((box[0] + 230, box[1] + 30, box[0] + 560, box[1] + 100), fill="white")
        label_font = face_font(True, 20)
        lb = draw.textbbox((box[0] + 10, box[1] + 6), label, font=label_font)
        draw.rectangle((lb[0] - 4, lb[1] - 4, lb[2] + 4, lb[3] + 4), fill="white")
        draw.text((box[0] + 10, box[1] + 6), label, fill="black", font=label_font)
        draw.text((box[0] + 250, box[1] + 34), " ".join(pin), fill="black",
                  font=face_font(True, 44))  # fmt: skip
        boxes.append(box)
        top += 150
    return MailerPage(img, tear_off, tuple(boxes))


def _wrap(value: str, width: int) -> list[str]:
    return [value[i : i + width] for i in range(0, len(value), width)] or [""]


def mailer_pdf(page: MailerPage, title: str = "PIN mailer") -> bytes:
    """The page as a one-page PDF (fixed dates: the same mailer gives the same bytes)."""
    buf = io.BytesIO()
    page.image.save(buf, "PDF", resolution=DPI, title=title, creationDate=EPOCH_2000,
                    modDate=EPOCH_2000)  # fmt: skip
    return buf.getvalue()


__all__ = [
    "MailerPage",
    "MailerText",
    "mailer_pdf",
    "mask_card_number",
    "render_pin_mailer",
]
