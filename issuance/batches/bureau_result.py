"""The bureau's result file: which cards it made (on which chip), which it spoiled (why).

Design notes: ``docs/design/batches.md`` (section ``issuance.batches.bureau_result``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from issuance import audit
from issuance.batches import items as bi
from issuance.batches.bureau import BureauFileInvalid
from issuance.batches.pipeline import mark_good
from issuance.errors import ValidationError
from issuance.models import BatchItem, BatchStage, BlankChip, ChipStatus

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from issuance.audit import Actor
    from issuance.settings import IssuanceConfig

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


@dataclass
class AppliedResult:
    """What :func:`apply_bureau_result` did."""

    file_id: str
    made: int = 0
    spoiled: int = 0
    failed: int = 0
    already_applied: int = 0
    refused: list[tuple[int, str]] = field(default_factory=list)
    """``(card_id, why)`` of result lines that do not fit the batch's state (not applied)."""


def apply_bureau_result(
    run_txn: Callable[[Callable[[Session], Any]], Any],
    settings: IssuanceConfig,
    result: BureauResult,
    actor: Actor,
    *,
    max_attempts: int | None = None,
) -> AppliedResult:
    """Apply a checked bureau result to its batch (see the module docstring); ``run_txn`` runs
    a function in one committed transaction. Idempotent."""
    import sqlalchemy as sa

    attempts = max_attempts or bi.DEFAULT_MAX_ATTEMPTS
    out = AppliedResult(result.file_id)

    def item_of(s: Session, card_id: int) -> BatchItem | None:
        return s.scalars(
            sa.select(BatchItem).where(
                BatchItem.card_id == card_id, BatchItem.bureau_file_id == result.file_id
            )
        ).one_or_none()

    def chip_status(s: Session, serial: str) -> ChipStatus | None:
        chip = s.scalars(sa.select(BlankChip).where(BlankChip.chip_serial == serial)).first()
        return None if chip is None else ChipStatus(chip.status)

    for made in result.made:

        def one_made(s: Session, made: MadeCard = made) -> str:
            item = item_of(s, made.card_id)
            if item is None:
                return "not exported in this bureau file"
            if item.stage == BatchStage.AT_BUREAU and item.chip_serial == made.chip_serial:
                item.station = "bureau"
                mark_good(s, settings, item, made.chip_serial, actor,
                          details={"bureau_file": result.file_id})  # fmt: skip
                bi.advance(s, item, "bureau_made", actor,
                           details={"bureau_file": result.file_id, "line": made.line})  # fmt: skip
                return "made"
            if item.chip_serial == made.chip_serial and chip_status(s, made.chip_serial) is (
                ChipStatus.GOOD
            ):
                return "already"
            return f"card is {item.stage}, not at the bureau on chip {made.chip_serial}"

        outcome = run_txn(one_made)
        if outcome == "made":
            out.made += 1
        elif outcome == "already":
            out.already_applied += 1
        else:
            out.refused.append((made.card_id, str(outcome)))

    for bad in result.spoiled:

        def one_spoiled(s: Session, bad: SpoiledCard = bad) -> str:
            item = item_of(s, bad.card_id)
            if item is None:
                return "not exported in this bureau file"
            if item.stage == BatchStage.AT_BUREAU:
                res = bi.spoil(s, item, actor, f"spoiled at the bureau: {bad.reason}",
                               max_attempts=attempts, station="bureau")  # fmt: skip
                item.bureau_file_id = result.file_id
                return "failed" if res.stage == BatchStage.FAILED else "spoiled"
            spoiled_here = s.scalar(
                sa.select(sa.func.count()).select_from(BlankChip).where(
                    BlankChip.item_id == item.id, BlankChip.status == ChipStatus.SPOILED,
                    BlankChip.reason.startswith("spoiled at the bureau"),
                )
            )  # fmt: skip
            if spoiled_here:
                return "already"
            return f"card is {item.stage}, not at the bureau"

        outcome = run_txn(one_spoiled)
        if outcome in ("spoiled", "failed"):
            out.spoiled += 1
            out.failed += outcome == "failed"
        elif outcome == "already":
            out.already_applied += 1
        else:
            out.refused.append((bad.card_id, str(outcome)))

    def record(s: Session) -> None:
        audit.record(
            s, actor, "batch.bureau_result_applied", "bureau_file", result.file_id,
            details={"made": out.made, "spoiled": out.spoiled, "failed": out.failed,
                     "already_applied": out.already_applied, "refused": len(out.refused),
                     "not_reported": len(result.missing)},
        )  # fmt: skip

    run_txn(record)
    return out


__all__ = [
    "RESULT_FORMAT",
    "AppliedResult",
    "BureauResult",
    "BureauResultInvalid",
    "CardOutcome",
    "LineProblem",
    "MadeCard",
    "ProblemKind",
    "SpoiledCard",
    "apply_bureau_result",
    "import_bureau_result",
]
