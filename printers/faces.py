"""Render the card's front and back with Pillow, from :mod:`printers.layout`.

The text is set in a real CJK font (Noto Sans/Serif CJK from Debian's fonts-noto-cjk, found with
``fc-list :lang=zh``); without one, :class:`printers.errors.FontMissing` says what to install.
The full social security number is printed, as on the real cards.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from printers.errors import FontMissing, PrinterError
from printers.facecode import FaceData, render_code
from printers.layout import DEFAULT_LAYOUT, Box, CardLayout, TextField, card_size_px

DEFAULT_DPI = 300
#: Where Debian puts the fonts if fontconfig is not at hand.
_KNOWN_FONTS = (
    Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc"),
    Path("/usr/share/fonts/opentype/noto/NotoSerifCJK-Bold.ttc"),
    Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc"),
)


@dataclass(frozen=True)
class CardFace:
    """What is printed on one card."""

    name: str
    ssn: str
    card_number: str
    issue_date: date
    photo_jpeg: bytes | None
    issuer_name: str
    bank_name: str
    region: str = ""
    #: Expiry date of the card (``settings.lifecycle.card_validity_years`` after issue).
    expiry_date: date | None = None
    #: Validity shown on the back, e.g. "长期"; empty = issue date to expiry date (or, for a
    #: sample face without expiry, the national default of ten years).
    validity: str = ""

    @property
    def photo_sha256(self) -> str | None:
        return hashlib.sha256(self.photo_jpeg).hexdigest() if self.photo_jpeg else None

    def validity_text(self) -> str:
        if self.validity:
            return self.validity
        end = self.expiry_date or _years_later(self.issue_date, 10)
        return f"{self.issue_date:%Y.%m.%d}-{end:%Y.%m.%d}"

    def face_data(self) -> FaceData:
        """What this face prints (and its face code says)."""
        return FaceData(
            card_number=self.card_number, ssn=self.ssn, name=self.name,
            issue_date=self.issue_date, region=self.region, validity=self.validity_text(),
            photo_sha256=self.photo_sha256,
        )  # fmt: skip


@dataclass(frozen=True)
class FontSet:
    regular: Path
    bold: Path
    #: Face index of the Simplified Chinese face inside each .ttc.
    regular_index: int
    bold_index: int


def _fc_list() -> list[tuple[Path, str]]:
    exe = shutil.which("fc-list")
    if exe is None:
        return []
    out = subprocess.run(
        [exe, ":lang=zh", "file", "family", "style"], capture_output=True, text=True, check=False
    ).stdout
    found = []
    for line in out.splitlines():
        path, _, rest = line.partition(":")
        found.append((Path(path.strip()), rest))
    return found


def _sc_index(path: Path) -> int:
    """Index of the "SC" face in a collection (0 for a single font)."""
    for index in range(16):
        try:
            font = ImageFont.truetype(str(path), 10, index=index)
        except OSError:
            break
        family = font.getname()[0] or ""
        if family.endswith(" SC"):
            return index
    return 0


@lru_cache(maxsize=1)
def find_fonts() -> FontSet:
    """Locate a CJK font for regular and bold text; raise FontMissing if there is none."""
    candidates = [p for p, _ in _fc_list()] + [p for p in _KNOWN_FONTS if p.exists()]
    cjk = [p for p in dict.fromkeys(candidates) if p.exists()]
    if not cjk:
        raise FontMissing(
            "no CJK font found (fc-list :lang=zh is empty): install Debian's fonts-noto-cjk"
        )
    regular = next((p for p in cjk if "Sans" in p.name and "Regular" in p.name), cjk[0])
    bold = next((p for p in cjk if "Bold" in p.name), regular)
    return FontSet(regular, bold, _sc_index(regular), _sc_index(bold))


@lru_cache(maxsize=64)
def face_font(bold: bool, size_px: int) -> ImageFont.FreeTypeFont:
    fonts = find_fonts()
    path, index = (fonts.bold, fonts.bold_index) if bold else (fonts.regular, fonts.regular_index)
    return ImageFont.truetype(str(path), size_px, index=index)


#: A code point no font has (the last private-use one of plane 16): its mask is the font's
#: .notdef glyph (the empty box), what a character the font lacks is drawn as.
_NOTDEF_PROBE = chr(0x10FFFD)


def _outside_gbk(ch: str) -> bool:
    try:
        ch.encode("gbk")
    except UnicodeEncodeError:
        return True
    return False


def lacks_glyph(font: ImageFont.FreeTypeFont, ch: str) -> bool:
    """Whether ``font`` draws ``ch`` as its .notdef box (or nothing): it has no glyph."""
    mask = font.getmask(ch)
    if mask.getbbox() is None:
        return not ch.isspace()
    probe = font.getmask(_NOTDEF_PROBE)
    return mask.size == probe.size and bytes(mask) == bytes(probe)


def _fc_font_with(chars: str) -> Path | None:
    """A font fontconfig knows that has every character of ``chars`` (``fc-list
    :charset=...``), CJK fonts first; None if there is none."""
    exe = shutil.which("fc-list")
    if exe is None:
        return None
    charset = " ".join(f"{ord(ch):x}" for ch in dict.fromkeys(chars))
    out = subprocess.run([exe, f":charset={charset}", "file"], capture_output=True, text=True,
                         check=False).stdout  # fmt: skip
    paths = [Path(line.split(":", 1)[0].strip()) for line in out.splitlines() if line.strip()]
    paths.sort(key=lambda p: ("CJK" not in p.name and "Hana" not in p.name, str(p)))
    return paths[0] if paths else None


@lru_cache(maxsize=256)
def _fallback_font(ch: str, size_px: int) -> ImageFont.FreeTypeFont:
    path = _fc_font_with(ch)
    if path is not None:
        font = ImageFont.truetype(str(path), size_px, index=_sc_index(path))
        if not lacks_glyph(font, ch):
            return font
    raise FontMissing(
        f"no installed font has U+{ord(ch):04X}: install Debian's fonts-hanazono "
        "(CJK Extension A/B)"
    )


def text_runs(text: str, bold: bool, size_px: int) -> list[tuple[str, ImageFont.FreeTypeFont]]:
    """``text`` cut into runs, each with a font that has its characters: the CJK face font,
    and for a rare character it lacks (outside GBK, e.g. CJK Extension B) a font fontconfig
    finds with it (Debian's fonts-hanazono covers Extension A and B). Raises
    :class:`FontMissing` naming the character when no installed font has it: a face never
    shows a name with a missing-glyph box."""
    font = face_font(bold, size_px)
    runs: list[tuple[str, ImageFont.FreeTypeFont]] = []
    for ch in text:
        use = font
        if _outside_gbk(ch) and lacks_glyph(font, ch):
            use = _fallback_font(ch, size_px)
        if runs and runs[-1][1] is use:
            runs[-1] = (runs[-1][0] + ch, use)
        else:
            runs.append((ch, use))
    return runs


def _runs_length(
    draw: ImageDraw.ImageDraw, runs: list[tuple[str, ImageFont.FreeTypeFont]]
) -> float:
    return sum(draw.textlength(t, font=f) for t, f in runs)


def _pt_px(pt: float, dpi: int) -> int:
    return max(6, round(pt * dpi / 72.0))


def _text(
    draw: ImageDraw.ImageDraw,
    field: TextField,
    value: str,
    dpi: int,
    fill: tuple[int, int, int] = (20, 20, 20),
    label_fill: tuple[int, int, int] = (90, 90, 90),
) -> None:
    left, top, right, bottom = field.box.px(dpi)
    font = face_font(field.bold, _pt_px(field.size_pt, dpi))
    cy = (top + bottom) / 2
    x = left
    if field.label and field.label_width_mm:
        draw.text((x, cy), field.label, font=font, fill=label_fill, anchor="lm")
        x = left + round(field.label_width_mm * dpi / 25.4)
        text = value
    else:
        text = field.label + value
    # fonts that have every character (a rare name), shrunk to fit the box (long names)
    size = int(font.size)
    runs = text_runs(text, field.bold, size)
    while size > 6 and _runs_length(draw, runs) > right - x:
        size -= 1
        runs = text_runs(text, field.bold, size)
    for part, font in runs:
        draw.text((x, cy), part, font=font, fill=fill, anchor="lm")
        x += round(draw.textlength(part, font=font))


def _issuer_mark(draw: ImageDraw.ImageDraw, box: Box, dpi: int) -> None:
    """A neutral emblem: a ring with a five-pointed star and a bar (not an official logo)."""
    left, top, right, bottom = box.px(dpi)
    w = right - left
    draw.ellipse(
        (left, top, right, bottom),
        fill=(255, 255, 255),
        outline=(255, 215, 0),
        width=max(2, w // 14),
    )
    import math

    cx, cy, r = (left + right) / 2, (top + bottom) / 2 - w * 0.06, w * 0.28
    points = []
    for i in range(10):
        ang = -math.pi / 2 + i * math.pi / 5
        rr = r if i % 2 == 0 else r * 0.42
        points.append((cx + rr * math.cos(ang), cy + rr * math.sin(ang)))
    draw.polygon(points, fill=(196, 30, 58))
    bar_top = bottom - w * 0.28
    draw.rectangle(
        (left + w * 0.3, bar_top, right - w * 0.3, bar_top + w * 0.07), fill=(196, 30, 58)
    )


def _bank_mark(draw: ImageDraw.ImageDraw, box: Box, dpi: int) -> None:
    """A neutral bank mark: a rounded plate with a square-holed coin (not a bank's logo)."""
    left, top, right, bottom = box.px(dpi)
    h = bottom - top
    draw.rounded_rectangle((left, top, right, bottom), radius=h // 5, fill=(255, 255, 255))
    cx, cy, r = left + h * 0.55, (top + bottom) / 2, h * 0.36
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(0, 94, 160))
    s = r * 0.38
    draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=(255, 255, 255))
    draw.line((left + h * 1.05, cy, right - h * 0.2, cy), fill=(0, 94, 160), width=max(2, h // 10))
    draw.line(
        (left + h * 1.05, cy + h * 0.2, right - h * 0.35, cy + h * 0.2),
        fill=(0, 94, 160),
        width=max(1, h // 16),
    )


def _paste_photo(img: Image.Image, box: Box, jpeg: bytes | None, dpi: int) -> None:
    left, top, right, bottom = box.px(dpi)
    draw = ImageDraw.Draw(img)
    if jpeg is None:
        draw.rectangle((left, top, right, bottom), fill=(255, 255, 255), outline=(160, 160, 160))
        font = face_font(False, _pt_px(6, dpi))
        draw.text(
            ((left + right) / 2, (top + bottom) / 2),
            "免贴照片",
            font=font,
            fill=(150, 150, 150),
            anchor="mm",
        )
        return
    try:
        photo: Image.Image = Image.open(io.BytesIO(jpeg)).convert("RGB")
    except (OSError, ValueError) as exc:
        raise PrinterError(f"the card photo cannot be decoded: {exc}") from exc
    photo = photo.resize((right - left, bottom - top), Image.Resampling.LANCZOS)
    img.paste(photo, (left, top))
    draw.rectangle((left, top, right - 1, bottom - 1), outline=(200, 200, 200))


def issue_month(d: date) -> str:
    """Issue date as printed: YYYY年MM月."""
    return f"{d.year:04d}年{d.month:02d}月"


def render_front(
    face: CardFace, dpi: int = DEFAULT_DPI, layout: CardLayout = DEFAULT_LAYOUT
) -> Image.Image:
    """The card front as an RGB image (1011 x 638 at 300 dpi)."""
    lay = layout.front
    img = Image.new("RGB", card_size_px(dpi), lay.background)
    draw = ImageDraw.Draw(img)
    draw.rectangle(lay.band.px(dpi), fill=lay.band_colour)
    # a thin gold rule under the band
    b = lay.band.px(dpi)
    draw.rectangle((0, b[3], b[2], b[3] + max(2, dpi // 100)), fill=(212, 175, 55))
    _issuer_mark(draw, lay.issuer_mark, dpi)
    white = (255, 255, 255)
    _text(draw, lay.issuer_name, face.issuer_name, dpi, fill=white, label_fill=white)
    _text(draw, lay.title, "", dpi, fill=white, label_fill=white)
    if lay.bank:
        _bank_mark(draw, lay.bank_mark, dpi)
        _text(draw, lay.bank_name, face.bank_name, dpi, fill=white, label_fill=white)
    _paste_photo(img, lay.photo, face.photo_jpeg, dpi)
    _text(draw, lay.name, face.name, dpi)
    _text(draw, lay.ssn, face.ssn, dpi)
    _text(draw, lay.card_number, face.card_number, dpi)
    _text(draw, lay.issue_date, issue_month(face.issue_date), dpi)
    if face.region and lay.validity is None:
        _text(draw, lay.region, face.region, dpi, fill=(110, 110, 110))
    if lay.validity is not None:
        end = face.expiry_date or _years_later(face.issue_date, 10)
        _text(draw, lay.validity, f"{end:%Y.%m.%d}", dpi)
    if lay.stamp is not None:
        _stamp(draw, lay.stamp, lay.stamp_colour, dpi)
    return img


def _stamp(
    draw: ImageDraw.ImageDraw, field: TextField, colour: tuple[int, int, int], dpi: int
) -> None:
    """A framed mark (the temporary card's "临时卡 TEMPORARY")."""
    left, top, right, bottom = field.box.px(dpi)
    draw.rectangle((left, top, right, bottom), outline=colour, width=max(2, dpi // 75))
    font = face_font(field.bold, _pt_px(field.size_pt, dpi))
    size = font.size
    while size > 6 and draw.textlength(field.label, font=font) > (right - left) * 0.92:
        size -= 1
        font = face_font(field.bold, size)
    draw.text(((left + right) / 2, (top + bottom) / 2), field.label, font=font, fill=colour,
              anchor="mm")  # fmt: skip


def render_back(
    face: CardFace, dpi: int = DEFAULT_DPI, layout: CardLayout = DEFAULT_LAYOUT
) -> Image.Image:
    """The card back as an RGB image."""
    lay = layout.back
    img = Image.new("RGB", card_size_px(dpi), lay.background)
    draw = ImageDraw.Draw(img)
    _text(draw, lay.title, "", dpi)
    left, top, _, _ = lay.notes_box.px(dpi)
    font = face_font(False, _pt_px(lay.notes_size_pt, dpi))
    line_h = round(font.size * 1.45)
    for i, line in enumerate(lay.notes):
        draw.text((left, top + i * line_h), line, font=font, fill=(40, 40, 40))
    _text(draw, lay.contact, "", dpi)
    _text(draw, lay.issuer, face.issuer_name, dpi)
    _text(draw, lay.validity, face.validity_text(), dpi)
    s = lay.signature.px(dpi)
    draw.line((s[0], s[3], s[2], s[3]), fill=(120, 120, 120), width=2)
    small = face_font(False, _pt_px(5, dpi))
    draw.text((s[0], s[3] - 4), "持卡人签名", font=small, fill=(120, 120, 120), anchor="ld")
    if lay.face_code is not None:
        left, top, right, bottom = lay.face_code.px(dpi)
        size = min(right - left, bottom - top)
        img.paste(render_code(face.face_data(), size).convert("RGB"), (left, top))
    return img


def _years_later(d: date, years: int) -> date:
    try:
        return d.replace(year=d.year + years)
    except ValueError:  # 29 February
        return d.replace(year=d.year + years, day=28)
