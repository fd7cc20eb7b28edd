"""The bureau's result file: which cards it made (on which chip), which it spoiled (why).

Format ``ykt-bureau-result/1`` (see :mod:`issuance.batches.bureau`): a header line naming the
bureau file it answers, then one JSON object per card. :func:`import_bureau_result` checks every
line against the cards of the bureau file: good lines are accounted for, every bad line is
listed with its line number and kind (malformed, unknown card, duplicate, chip serial not the
one the card was prepared for), and cards the bureau did not mention are listed as missing;
nothing is dropped silently. The typed :class:`BureauResult` is what the batch pipeline applies.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from issuance.batches.bureau import BureauFileInvalid
from issuance.errors import ValidationError

RESULT_FORMAT = "ykt-bureau-result/1"
_BUFFER = 1 << 20


class ProblemKind(StrEnum):
    """Why a line of a bureau result file was not accepted."""

    MALFORMED = "malformed"
    """Not a JSON object with the fields of its result (or a wrong header)."""
    UNKNOWN_CARD = "unknown_card"
    """``card_id`` is not a card of the bureau file."""
    DUPLICATE = "duplicate"
    """The card was already reported on an earlier line (that first line counts)."""
    SERIAL_MISMATCH = "serial_mismatch"
    """Reported as made on a chip other than the one its keys were prepared for."""


@dataclass(frozen=True, slots=True)
class LineProblem:
    line: int
    kind: ProblemKind
    reason: str
    card_id: int | None = None


class BureauResultInvalid(ValidationError):
    """A bureau result file has bad lines. ``result`` holds what was accounted anyway (good
    lines, the problems with their line numbers, cards not reported)."""

    code = "bureau_result_invalid"

    def __init__(self, result: BureauResult) -> None:
        self.result = result
        parts = []
        for kind in ProblemKind:
            lines = [p.line for p in result.problems if p.kind is kind]
            if lines:
                shown = ", ".join(str(n) for n in lines[:20])
                more = f" (+{len(lines) - 20} more)" if len(lines) > 20 else ""
                parts.append(f"{kind.value} on line{'s' if len(lines) > 1 else ''} {shown}{more}")
        if result.missing:
            parts.append(f"{len(result.missing)} card(s) not reported")
        super().__init__("bureau result file rejected: " + "; ".join(parts))

    def __str__(self) -> str:
        return self.message

    def lines(self, kind: ProblemKind) -> list[int]:
        return [p.line for p in self.result.problems if p.kind is kind]


class CardOutcome(StrEnum):
    MADE = "made"
    SPOILED = "spoiled"


@dataclass(frozen=True, slots=True)
class MadeCard:
    card_id: int
    chip_serial: str
    line: int


@dataclass(frozen=True, slots=True)
class SpoiledCard:
    card_id: int
    reason: str
    line: int


@dataclass(frozen=True)
class BureauResult:
    """A bureau result file, checked: what the batch pipeline applies."""

    file_id: str
    made: tuple[MadeCard, ...]
    spoiled: tuple[SpoiledCard, ...]
    problems: tuple[LineProblem, ...]
    """Every line not accepted, with its line number and kind."""
    missing: tuple[int, ...]
    """Cards of the bureau file the result does not mention (still at the bureau)."""
    lines: int

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_for_problems(self, *, allow_missing: bool = True) -> None:
        """Raise :class:`BureauResultInvalid` if any line was refused (or, with
        ``allow_missing=False``, if a card was not reported)."""
        if self.problems or (self.missing and not allow_missing):
            raise BureauResultInvalid(self)


_SERIAL_CHARS = frozenset("0123456789ABCDEF")


def import_bureau_result(
    path: Path, expected: Mapping[int, str], file_id: str, *, strict: bool = False
) -> BureauResult:
    """Read a bureau result file and check every line against ``expected`` (``card_id ->
    chip serial`` of the bureau file, e.g. :func:`expected_cards`) and ``file_id`` (the bureau
    file it answers). Returns the :class:`BureauResult` (good lines accounted, bad lines
    listed); with ``strict`` raises :class:`BureauResultInvalid` if any line was refused.
    A result for another bureau file, or without a header, is refused as a whole."""
    made: list[MadeCard] = []
    spoiled: list[SpoiledCard] = []
    problems: list[LineProblem] = []
    seen: set[int] = set()
    line_no = 0
    with open(path, "rb", buffering=_BUFFER) as stream:
        for raw in stream:
            line_no += 1
            text = raw.strip()
            if line_no == 1:
                head = _result_header(text)
                if head != file_id:
                    raise BureauFileInvalid(
                        f"result file answers bureau file {head!r}, not {file_id!r}", line=1
                    )
                continue
            if not text:
                continue
            problem = _result_line(text, line_no, expected, seen, made, spoiled)
            if problem is not None:
                problems.append(problem)
    if line_no == 0:
        raise BureauFileInvalid("empty result file")
    missing = tuple(sorted(card_id for card_id in expected if card_id not in seen))
    result = BureauResult(file_id, tuple(made), tuple(spoiled), tuple(problems), missing, line_no)
    if strict:
        result.raise_for_problems()
    return result


def _result_header(text: bytes) -> str:
    try:
        obj = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError):
        obj = None
    if (
        not isinstance(obj, dict)
        or obj.get("type") != "header"
        or obj.get("format") != RESULT_FORMAT
        or not isinstance(obj.get("file_id"), str)
    ):
        raise BureauFileInvalid(f"line 1 is not a {RESULT_FORMAT} header", line=1)
    return str(obj["file_id"])


def _result_line(
    text: bytes,
    line: int,
    expected: Mapping[int, str],
    seen: set[int],
    made: list[MadeCard],
    spoiled: list[SpoiledCard],
) -> LineProblem | None:
    def bad(reason: str, card_id: int | None = None) -> LineProblem:
        return LineProblem(line, ProblemKind.MALFORMED, reason, card_id)

    try:
        obj = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return bad(f"not JSON: {exc.msg if isinstance(exc, json.JSONDecodeError) else exc}")
    if not isinstance(obj, dict):
        return bad("not a JSON object")
    card_id = obj.get("card_id")
    if not isinstance(card_id, int) or isinstance(card_id, bool) or card_id <= 0:
        return bad("card_id must be a positive integer")
    try:
        outcome = CardOutcome(str(obj.get("result")))
    except ValueError:
        return bad(f"result must be 'made' or 'spoiled', got {obj.get('result')!r}", card_id)
    serial = reason = ""
    if outcome is CardOutcome.MADE:
        chip = obj.get("chip_serial")
        if not isinstance(chip, str) or len(chip) != 16 or set(chip.upper()) - _SERIAL_CHARS:
            return bad("chip_serial must be 16 hexadecimal characters", card_id)
        serial = chip.upper()
    else:
        given = obj.get("reason")
        if not isinstance(given, str) or not given.strip():
            return bad("a spoiled card needs a reason", card_id)
        reason = given.strip()
    if card_id not in expected:
        return LineProblem(line, ProblemKind.UNKNOWN_CARD, "not a card of the bureau file", card_id)
    if card_id in seen:
        return LineProblem(line, ProblemKind.DUPLICATE, "card reported again", card_id)
    if outcome is CardOutcome.MADE:
        if serial != expected[card_id].upper():
            return LineProblem(
                line,
                ProblemKind.SERIAL_MISMATCH,
                f"made on chip {serial}, prepared for {expected[card_id].upper()}",
                card_id,
            )
        seen.add(card_id)
        made.append(MadeCard(card_id, serial, line))
    else:
        seen.add(card_id)
        spoiled.append(SpoiledCard(card_id, reason, line))
    return None


__all__ = [
    "RESULT_FORMAT",
    "BureauResult",
    "BureauResultInvalid",
    "CardOutcome",
    "LineProblem",
    "MadeCard",
    "ProblemKind",
    "SpoiledCard",
    "import_bureau_result",
]
