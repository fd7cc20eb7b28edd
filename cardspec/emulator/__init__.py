"""The reference card emulator: a card OS that runs a :class:`cardspec.profile.CardProfile`.

``blank_card(serial, kmc, algorithm, klk=...)`` makes a blank chip; ``Card.load(path)`` reopens
a saved image; a :class:`Card` is a :class:`cardspec.reader.CardHandler` (serve it in-process with
:class:`cardspec.reader.InProcessReader` or over vpcd).
"""

from __future__ import annotations

from cardspec.emulator.card import Card, blank_card, build_atr
from cardspec.emulator.image import CardState, LifeCycle, PinState

__all__ = ["Card", "CardState", "LifeCycle", "PinState", "blank_card", "build_atr"]
