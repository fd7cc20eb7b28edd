"""Rare name characters on the face: drawn with a font that has them (Noto CJK, or the
fonts-hanazono fallback for Extension A/B characters Noto lacks), never as a .notdef box."""

from __future__ import annotations

import dataclasses

import pytest
from PIL import ImageChops

from printers.errors import FontMissing
from printers.faces import CardFace, face_font, lacks_glyph, render_front, text_runs
from printers.layout import DEFAULT_LAYOUT

NOTDEF = chr(0x10FFFD)  # private use: no font has it


@pytest.mark.parametrize("ch", ["\U00020bb7", "\U0002a6d6", "\U0002b740"])
def test_rare_character_gets_a_glyph(ch: str) -> None:
    runs = text_runs("王" + ch, False, 48)
    font = next(f for t, f in runs if ch in t)
    assert not lacks_glyph(font, ch)
    assert lacks_glyph(font, NOTDEF)
    # the glyph drawn is not the box a missing character is drawn as
    assert bytes(font.getmask(ch)) != bytes(font.getmask(NOTDEF))


def test_a_character_noto_lacks_comes_from_the_fallback_font() -> None:
    ch = "\U0002a6d6"  # 𪛖, the last character of Extension B
    assert lacks_glyph(face_font(False, 48), ch)
    runs = text_runs("王" + ch + "明", False, 48)
    assert [r[0] for r in runs] == ["王", ch, "明"]
    assert runs[1][1].getname()[0].startswith("HanaMin")


def test_no_font_no_face() -> None:
    with pytest.raises(FontMissing, match="U\\+10FFFD"):
        text_runs("王" + NOTDEF, False, 48)


def test_the_face_prints_the_rare_name(face: CardFace) -> None:
    box = DEFAULT_LAYOUT.front.name.box.px(300)
    rare = render_front(dataclasses.replace(face, name="王\U0002a6d6")).crop(box)
    other = render_front(dataclasses.replace(face, name="王*")).crop(box)
    assert ImageChops.difference(rare, other).getbbox() is not None
