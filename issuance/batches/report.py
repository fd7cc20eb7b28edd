"""The batch report: counts by stage and card status, chips used and spoiled (with reasons),
spoil rate, mean time per stage; as text and as a PNG chart (Pillow, CJK-capable font when
one is installed)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa
from PIL import Image, ImageDraw, ImageFont
from sqlalchemy.orm import Session

from issuance.batches import items as bi
from issuance.batches.pipeline import safe_job_id
from issuance.models import Batch, BatchItem, BatchStage, BlankChip, Card, ChipStatus
from issuance.settings import IssuanceConfig
from printers.faces import find_fonts

#: (label, from column, to column) of the time-per-stage figures.
STAGE_SPANS = (
    ("prepare", "created_at", "prepared_at"),
    ("personalise", "prepared_at", "personalised_at"),
    ("print", "personalised_at", "printed_at"),
    ("check", "printed_at", "checked_at"),
    ("ship", "checked_at", "shipped_at"),
    ("issue", "shipped_at", "issued_at"),
)


@dataclass
class BatchReport:
    batch_id: int
    name: str
    status: str
    created_at: datetime
    completed_at: datetime | None
    cards: int
    stages: dict[str, int]
    card_statuses: dict[str, int]
    chips: dict[str, int]
    spoil_reasons: dict[str, int]
    mean_seconds: dict[str, float | None]
    apdus_per_card: float | None
    spoiled_cards_shipped: int
    filters: dict[str, str] = field(default_factory=dict)
    #: ``(card number, attempts, last error)`` of every failed card (a supervisor decides).
    failed_cards: list[tuple[str, int, str]] = field(default_factory=list)
    withdrawn: int = 0

    @property
    def good(self) -> int:
        return sum(self.stages.get(s, 0) for s in ("checked", "shipped", "issued"))

    @property
    def spoil_rate(self) -> float:
        used = self.chips.get("good", 0) + self.chips.get("spoiled", 0)
        return self.chips.get("spoiled", 0) / used if used else 0.0

    def text(self, settings: IssuanceConfig | None = None) -> str:
        """The report as text; times in the issuer's time zone with their offset (the default
        settings' zone when none are given)."""
        from issuance.display import local_time

        cfg = settings or IssuanceConfig()
        lines = [
            f"Batch {self.name} (id {self.batch_id}): {self.status}, {self.cards} card(s)",
            f"  created {local_time(self.created_at, cfg)}"
            + (f", produced {local_time(self.completed_at, cfg)}" if self.completed_at else ""),
        ]
        if self.filters:
            lines.append("  selection: " + ", ".join(f"{k} {v}" for k, v in self.filters.items()))
        lines.append("  by stage: " + ", ".join(f"{k} {v}" for k, v in self.stages.items() if v))
        lines.append(
            "  cards by status: " + ", ".join(f"{k} {v}" for k, v in self.card_statuses.items())
        )
        lines.append(
            f"  chips: {sum(self.chips.values())} used, good {self.chips.get('good', 0)}, "
            f"spoiled {self.chips.get('spoiled', 0)}, in hand {self.chips.get('assigned', 0)}; "
            f"spoil rate {self.spoil_rate:.1%}"
        )
        for reason, n in self.spoil_reasons.items():
            lines.append(f"    spoiled x{n}: {reason}")
        times = [
            f"{k} {v:.2f}s" if v is not None else f"{k} -" for k, v in self.mean_seconds.items()
        ]
        lines.append("  mean time per stage: " + ", ".join(times))
        if self.apdus_per_card is not None:
            lines.append(f"  APDUs per card (personalisation): {self.apdus_per_card:.1f}")
        lines.append(f"  spoiled chips on shipped/issued cards: {self.spoiled_cards_shipped}")
        if self.failed_cards:
            lines.append(
                f"  failed cards ({len(self.failed_cards)}): ykt batch retry {self.name} "
                f"[--card N] or ykt batch withdraw {self.name} --card N"
            )
            for number, attempts, error in self.failed_cards:
                lines.append(f"    {number}: {attempts} chip(s) spoiled, last: {error}")
        if self.withdrawn:
            lines.append(f"  withdrawn from production (cancelled): {self.withdrawn}")
        return "\n".join(lines)


def _reason_kind(reason: str | None) -> str:
    if not reason:
        return "unknown"
    return reason.split(":")[0][:80]


def _span_start(item: BatchItem, column: str, batch: Batch) -> datetime:
    """When a stage's work on ``item`` could start: data preparation not before the batch's
    run started (a batch created in the morning and run in the afternoon did not spend the
    hours between in preparation)."""
    start: datetime = getattr(item, column)
    if column == "created_at" and batch.started_at is not None:
        return max(start, batch.started_at)
    return start


def build_report(session: Session, batch_id: int) -> BatchReport:
    batch = session.get(Batch, batch_id)
    assert batch is not None
    stages = {str(k): v for k, v in bi.stage_counts(session, batch_id).items()}
    statuses: dict[str, int] = {}
    for status, count in session.execute(
        sa.select(Card.status, sa.func.count())
        .join(BatchItem, BatchItem.card_id == Card.id)
        .where(BatchItem.batch_id == batch_id)
        .group_by(Card.status)
    ):
        statuses[str(status)] = int(count)
    chips = Counter[str]()
    reasons = Counter[str]()
    for status, reason in session.execute(
        sa.select(BlankChip.status, BlankChip.reason).where(BlankChip.batch_id == batch_id)
    ):
        chips[str(status)] += 1
        if status == ChipStatus.SPOILED:
            reasons[_reason_kind(reason)] += 1
    items = session.scalars(sa.select(BatchItem).where(BatchItem.batch_id == batch_id)).all()
    means: dict[str, float | None] = {}
    for label, frm, to in STAGE_SPANS:
        spans = [
            (getattr(i, to) - _span_start(i, frm, batch)).total_seconds()
            for i in items
            if getattr(i, frm) is not None and getattr(i, to) is not None
        ]
        means[label] = sum(spans) / len(spans) if spans else None
    apdus = [i.apdu_count for i in items if i.apdu_count]
    bad_shipped = session.scalar(
        sa.select(sa.func.count())
        .select_from(BatchItem)
        .join(BlankChip, BlankChip.chip_serial == BatchItem.chip_serial)
        .where(
            BatchItem.batch_id == batch_id,
            BatchItem.stage.in_([BatchStage.SHIPPED, BatchStage.ISSUED]),
            BlankChip.status != ChipStatus.GOOD,
        )
    )
    filters = {
        k: str(v)
        for k, v in (
            ("region", batch.region_code),
            ("collective", batch.collective_id),
            ("approved from", batch.approved_from),
            ("approved to", batch.approved_to),
        )
        if v is not None
    }
    failed = [
        (str(number), int(attempts), str(error or ""))
        for number, attempts, error in session.execute(
            sa.select(Card.card_number, BatchItem.attempts, BatchItem.last_error)
            .join(Card, Card.id == BatchItem.card_id)
            .where(BatchItem.batch_id == batch_id, BatchItem.stage == BatchStage.FAILED)
            .order_by(Card.card_number)
        )
    ]
    return BatchReport(
        batch.id, batch.name, batch.status, batch.created_at, batch.completed_at,
        batch.card_count, stages, statuses, dict(chips),
        dict(reasons), means, sum(apdus) / len(apdus) if apdus else None, int(bad_shipped or 0),
        filters, failed, stages.get(str(BatchStage.WITHDRAWN), 0),
    )  # fmt: skip


def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        fonts = find_fonts()
        return ImageFont.truetype(str(fonts.regular), size, index=fonts.regular_index)
    except Exception:
        return ImageFont.load_default()


_COLOURS = {
    "selected": (160, 160, 160), "prepared": (120, 170, 220), "encoding": (240, 180, 60),
    "personalised": (90, 140, 210), "printed": (70, 110, 190), "checked": (60, 160, 90),
    "shipped": (40, 130, 70), "issued": (20, 100, 50), "failed": (200, 60, 60),
    "at_bureau": (150, 110, 200), "withdrawn": (110, 60, 60),
}  # fmt: skip


def write_chart(report: BatchReport, path: Path) -> Path:
    """A PNG: cards by stage, chips good/spoiled, and mean seconds per stage."""
    w, h = 1200, 720
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    title, body, small = font(30), font(20), font(16)
    d.text((30, 20), f"Batch {report.name}: {report.cards} cards, {report.good} good, "
           f"spoil rate {report.spoil_rate:.1%}", font=title, fill=(20, 20, 20))  # fmt: skip

    def bars(x0: int, y0: int, width: int, height: int, heading: str,
             values: list[tuple[str, float, tuple[int, int, int]]], fmt: str) -> None:  # fmt: skip
        d.text((x0, y0), heading, font=body, fill=(40, 40, 40))
        top, bottom = y0 + 40, y0 + height - 40
        peak = max((v for _, v, _ in values), default=0) or 1
        slot = width // max(1, len(values))
        for n, (label, value, colour) in enumerate(values):
            bh = int((bottom - top) * value / peak)
            x = x0 + n * slot + 6
            d.rectangle((x, bottom - bh, x + slot - 12, bottom), fill=colour)
            d.text((x, bottom - bh - 22), fmt.format(value), font=small, fill=(20, 20, 20))
            d.text((x, bottom + 6), label, font=small, fill=(60, 60, 60))
        d.line((x0, bottom, x0 + width, bottom), fill=(120, 120, 120), width=2)

    stage_vals = [(k, float(v), _COLOURS.get(k, (100, 100, 100)))
                  for k, v in report.stages.items()]  # fmt: skip
    bars(30, 80, 1140, 300, "cards by stage", stage_vals, "{:.0f}")
    chip_vals = [
        ("good", float(report.chips.get("good", 0)), (60, 160, 90)),
        ("spoiled", float(report.chips.get("spoiled", 0)), (200, 60, 60)),
        ("in hand", float(report.chips.get("assigned", 0)), (160, 160, 160)),
    ]
    bars(30, 400, 360, 300, "chips", chip_vals, "{:.0f}")
    time_vals = [(k, float(v or 0.0), (90, 140, 210)) for k, v in report.mean_seconds.items()]
    bars(430, 400, 740, 300, "mean seconds per stage", time_vals, "{:.2f}")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, "PNG")
    return path


def write_report(
    report: BatchReport, directory: Path, settings: IssuanceConfig | None = None
) -> tuple[Path, Path]:
    """``<directory>/<batch>.report.txt`` and ``.report.png`` (times in ``settings``' zone)."""
    stem = safe_job_id(report.name)
    directory.mkdir(parents=True, exist_ok=True)
    text = directory / f"{stem}.report.txt"
    text.write_text(report.text(settings) + "\n", encoding="utf-8")
    return text, write_chart(report, directory / f"{stem}.report.png")
