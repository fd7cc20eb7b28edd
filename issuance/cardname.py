"""The name written to the card of a holder whose name has characters outside GBK (生僻字).

The chip's name field (EF06 tag 09, continued in tag 4E) is GBK text (LD/T 32; the profile's
``Fmt.GBK``), so a character outside GBK, such as 𠮷 (U+20BB7, CJK Extension B) in 王𠮷,
cannot be written as it is. The holder's true name is stored in Unicode (``persons.name``),
printed on the card face with a font that has the character (:mod:`printers.faces` refuses a
face whose font lacks one), and shown everywhere; the chip gets the name with each character
outside GBK replaced by the city's substitution rule, recorded with the holder
(``persons.card_name``) and in the audit event ``person.card_name_substituted``.

CHOICE, the rule (``[issuer] gbk_substitutes`` and ``[issuer] gbk_placeholder``): the city's
table first (a character -> its substitute, e.g. a homophone or a common variant such as
𠮷 -> 吉, the form the holder's other records, bank and insurance, already use), and for a
character the table does not have, the placeholder (default ``*``). Why: a terminal that shows
the chip's name must never show a different person's name by accident, so a character nobody
chose a substitute for is marked as such (``*`` is not a letter of any name, and GBK, ASCII
and every terminal display it) rather than guessed by a pronunciation table the project would
have to maintain; a city that has agreed substitutes with its insurance and bank systems puts
them in the table. The true name stays the authority: the face, the API and the counter show
it, and the chip's substitute is recorded so it can be explained and corrected.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


def in_gbk(text: str) -> bool:
    """Whether ``text`` can be written in a GBK field."""
    try:
        text.encode("gbk")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True)
class CardName:
    """The name as the chip holds it and what was substituted to get it."""

    text: str
    #: (character, substitute) for each character outside GBK, in the name's order
    substitutions: tuple[tuple[str, str], ...] = ()

    @property
    def substituted(self) -> bool:
        return bool(self.substitutions)

    def audit_details(self) -> dict[str, object]:
        """What the audit event records: code points and substitutes, never the name."""
        return {
            "characters": [f"U+{ord(ch):04X}" for ch, _ in self.substitutions],
            "substitutes": [sub for _, sub in self.substitutions],
        }


def card_name(name: str, table: Mapping[str, str], placeholder: str) -> CardName:
    """The chip's GBK name of ``name`` under the substitution rule (see the module
    docstring): the name itself when it is all GBK."""
    if in_gbk(name):
        return CardName(name)
    out: list[str] = []
    subs: list[tuple[str, str]] = []
    for ch in name:
        if in_gbk(ch):
            out.append(ch)
            continue
        sub = table.get(ch, placeholder)
        out.append(sub)
        subs.append((ch, sub))
    return CardName("".join(out), tuple(subs))
