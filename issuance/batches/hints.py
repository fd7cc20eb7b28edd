"""The next step a batch calls for, from where its cards are (one rule for every command that
suggests one: ``batch run``, ``batch resume``, ``batch ship``)."""

from __future__ import annotations

from collections.abc import Mapping

from issuance.models import BatchStage

#: Stages of cards still being made in house (a run or a resume moves them on).
IN_PRODUCTION = (
    BatchStage.SELECTED,
    BatchStage.PREPARED,
    BatchStage.ENCODING,
    BatchStage.PERSONALISED,
    BatchStage.PRINTED,
)


def next_step(batch: str, counts: Mapping[BatchStage, int]) -> str | None:
    """The command (or action) to do next, or None when every card is issued or withdrawn."""
    if counts.get(BatchStage.FAILED, 0):
        return (f"ykt batch retry {batch} [--card N] or ykt batch withdraw {batch} --card N "
                "--reason TEXT (failed cards)")  # fmt: skip
    if any(counts.get(st, 0) for st in IN_PRODUCTION):
        return f"ykt batch resume {batch}"
    if counts.get(BatchStage.CHECKED, 0):
        return f"ykt batch ship {batch} --to <collection point> --as <staff>"
    if counts.get(BatchStage.AT_BUREAU, 0):
        return "ykt bureau import RESULT --bureau-file FILE (when the bureau's result comes back)"
    if counts.get(BatchStage.SHIPPED, 0):
        return "the holders collect their cards at the collection point (ykt batch collect CARD)"
    return None
