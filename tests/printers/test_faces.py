"""Card-face rendering: size, real CJK text, photo, layout data."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
from PIL import Image, ImageFont

from printers import faces
from printers.faces import CardFace, find_fonts, issue_month, render_back, render_front
from printers.layout import DEFAULT_LAYOUT, card_size_px, mm_to_px


def _diff(a: Image.Image, b: Image.Image, box: tuple[int, int, int, int] | None = None) -> int:
    x = np.asarray(a.crop(box) if box else a, dtype=np.int16)
    y = np.asarray(b.crop(box) if box else b, dtype=np.int16)
    return int(np.count_nonzero(np.abs(x - y).sum(axis=2) > 30))


def test_id1_size_at_300_dpi() -> None:
    assert card_size_px(300) == (1011, 638)
    assert mm_to_px(85.60, 600) == 2022


def test_front_and_back_size(face: CardFace) -> None:
    front, back = render_front(face), render_back(face)
    assert front.size == back.size == (1011, 638)
    assert front.mode == back.mode == "RGB"
    assert render_front(face, dpi=600).size == (2022, 1275)


def test_font_is_a_cjk_font_with_the_glyphs() -> None:
    fonts = find_fonts()
    font = ImageFont.truetype(str(fonts.regular), 40, index=fonts.regular_index)
    assert "CJK" in font.getname()[0]
    # a real glyph for every character of the title, not the .notdef box
    notdef = font.getmask("\uffff").getbbox()
    for ch in "社会保障卡张晓明":
        mask = font.getmask(ch)
        assert mask.getbbox() is not None and mask.getbbox() != notdef


def test_cjk_name_is_actually_drawn(face: CardFace) -> None:
    with_name = render_front(face)
    without = render_front(dataclasses.replace(face, name=""))
    box = DEFAULT_LAYOUT.front.name.box.px(300)
    changed = _diff(with_name, without, box)
    assert changed > 300  # dark strokes of three characters
    other = _diff(with_name, without, DEFAULT_LAYOUT.front.ssn.box.px(300))
    assert other == 0  # and nothing else moved


def test_full_ssn_and_issue_month_are_printed(face: CardFace) -> None:
    base = render_front(face)
    changed = render_front(dataclasses.replace(face, ssn="330106199001011230"))
    assert _diff(base, changed, DEFAULT_LAYOUT.front.ssn.box.px(300)) > 0
    assert issue_month(face.issue_date) == "2024年05月"


def test_photo_is_pasted_in_the_photo_box(face: CardFace) -> None:
    with_photo = render_front(face)
    without = render_front(dataclasses.replace(face, photo_jpeg=None))
    left, top, right, bottom = DEFAULT_LAYOUT.front.photo.px(300)
    assert (
        _diff(with_photo, without, (left, top, right, bottom))
        > (right - left) * (bottom - top) // 3
    )
    expected = Image.open(io.BytesIO(face.photo_jpeg or b"")).convert("RGB")
    expected = expected.resize((right - left, bottom - top))
    pasted = with_photo.crop((left + 2, top + 2, right - 2, bottom - 2))
    ref = expected.crop((2, 2, expected.width - 2, expected.height - 2))
    mean = np.mean(np.abs(np.asarray(pasted, float) - np.asarray(ref, float)))
    assert mean < 6


def test_back_shows_issuer_and_validity(face: CardFace) -> None:
    a = render_back(face)
    b = render_back(dataclasses.replace(face, issuer_name="宁波市人力资源和社会保障局"))
    assert _diff(a, b, DEFAULT_LAYOUT.back.issuer.box.px(300)) > 0
    assert _diff(a, b, DEFAULT_LAYOUT.back.validity.box.px(300)) == 0


def test_undecodable_photo_is_a_printer_error(face: CardFace) -> None:
    from printers.errors import PrinterError

    with pytest.raises(PrinterError):
        render_front(dataclasses.replace(face, photo_jpeg=b"not a jpeg"))


def test_missing_font_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    from printers.errors import FontMissing

    monkeypatch.setattr(faces, "_fc_list", lambda: [])
    monkeypatch.setattr(faces, "_KNOWN_FONTS", ())
    faces.find_fonts.cache_clear()
    try:
        with pytest.raises(FontMissing, match="fonts-noto-cjk"):
            find_fonts()
    finally:
        faces.find_fonts.cache_clear()
