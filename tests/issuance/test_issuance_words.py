"""Words people read (issue 16): times in the issuer's time zone with their offset, money in
yuan with two decimals, no ``None``; the batch's next-step hint from where its cards are; the
report's preparation time from the run's start, not the batch's creation."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from issuance import display
from issuance.batches.hints import next_step
from issuance.batches.report import BatchReport, _span_start
from issuance.errors import ConfigError
from issuance.models import Batch, BatchItem, BatchStage
from yikatong.settings import Settings, load_settings


def test_times_in_the_issuer_zone_with_offset() -> None:
    utc = datetime(2026, 12, 13, 10, 31, 27, 802209)
    assert display.local_time(utc, Settings()) == "2026-12-13 18:31:27 +08:00"
    berlin = load_settings(environ={"YKT_ISSUER__TIME_ZONE": "Europe/Berlin"})
    assert display.local_time(utc, berlin) == "2026-12-13 11:31:27 +01:00"
    assert display.local_time(None, Settings()) == "-"
    assert display.local_iso(utc, Settings()) == "2026-12-13T18:31:27+08:00"
    with pytest.raises(ConfigError, match="unknown time zone"):
        load_settings(environ={"YKT_ISSUER__TIME_ZONE": "Mars/Olympus"})


def test_money_and_missing_values() -> None:
    assert display.yuan(2000) == "20.00 yuan"
    assert display.yuan(5) == "0.05 yuan"
    assert display.yuan(-50) == "-0.50 yuan"
    assert display.yuan(0) == "0.00 yuan"
    assert display.text(None) == "-" and display.text("") == "-" and display.text(3) == "3"
    assert display.validity(None, None) == "no validity yet (not personalised)"
    assert display.validity(date(2026, 1, 2), date(2036, 1, 2)) == "valid 2026-01-02 – 2036-01-02"


@given(st.integers(min_value=-(10**12), max_value=10**12))
def test_yuan_is_exact_to_the_fen(fen: int) -> None:
    text = display.yuan(fen)
    number = text.removesuffix(" yuan")
    whole, cents = number.lstrip("-").split(".")
    assert len(cents) == 2
    assert (-1 if number.startswith("-") else 1) * (int(whole) * 100 + int(cents)) == fen


def test_next_step_follows_the_stages() -> None:
    def c(**kw: int) -> dict[BatchStage, int]:
        return {BatchStage(k): v for k, v in kw.items()}

    assert next_step("b", c(checked=3)) == "ykt batch ship b --to <collection point> --as <staff>"
    assert next_step("b", c(checked=1, prepared=2)) == "ykt batch resume b"
    assert "retry" in (next_step("b", c(failed=1, checked=2)) or "")
    shipped = next_step("b", c(shipped=5, issued=2))  # a shipped batch: never "batch ship"
    assert shipped is not None and "collect" in shipped and "ship b" not in shipped
    assert next_step("b", c(issued=5, withdrawn=1)) is None
    assert "bureau import" in (next_step("b", c(at_bureau=2)) or "")


def test_preparation_time_starts_with_the_run() -> None:
    created = datetime(2026, 12, 6, 8, 0)
    started = created + timedelta(hours=4)
    item = BatchItem(created_at=created, prepared_at=started + timedelta(seconds=2))
    batch = Batch(created_at=created, started_at=started)
    assert _span_start(item, "created_at", batch) == started
    assert _span_start(item, "prepared_at", batch) == item.prepared_at
    assert _span_start(item, "created_at", Batch(created_at=created)) == created


def test_report_times_are_local() -> None:
    rep = BatchReport(1, "b", "done", datetime(2026, 12, 6, 1, 0), datetime(2026, 12, 6, 2, 0),
                      0, {}, {}, {}, {}, {"prepare": 1.5}, None, 0)  # fmt: skip
    text = rep.text(Settings())
    assert "created 2026-12-06 09:00:00 +08:00, produced 2026-12-06 10:00:00 +08:00" in text
    assert "None" not in text
