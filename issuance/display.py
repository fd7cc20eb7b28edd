"""Words people read: times in the issuer's time zone with their offset, money in yuan, and
no ``None``. One place for each, so the CLI, the API's text and a later console agree.

Times are stored naive UTC (:func:`issuance.models.utcnow`); :func:`local_time` shows one in
``[issuer] time_zone`` (default Asia/Shanghai) as ``2026-12-13 18:31:27 +08:00``. Money is
integer fen; :func:`yuan` shows ``20.00 yuan`` (never a float on the way).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

from issuance.settings import IssuanceConfig

#: What is shown for a value that is not there (never Python's ``None``).
MISSING = "-"


@lru_cache(maxsize=8)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def local_time(value: datetime | None, settings: IssuanceConfig, *, seconds: bool = True) -> str:
    """A stored time (naive = UTC) in the issuer's zone with its offset, e.g.
    ``2026-12-13 18:31:27 +08:00``; :data:`MISSING` for None."""
    if value is None:
        return MISSING
    aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value
    local = aware.astimezone(_zone(settings.issuer.time_zone))
    text = local.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")
    offset = local.strftime("%z")  # +0800
    return f"{text} {offset[:3]}:{offset[3:]}"


def local_iso(value: datetime | None, settings: IssuanceConfig) -> str | None:
    """The same time as ISO 8601 with its offset (for machine-readable output)."""
    if value is None:
        return None
    aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value
    return aware.astimezone(_zone(settings.issuer.time_zone)).isoformat(timespec="seconds")


def day(value: date | None) -> str:
    """A calendar date (YYYY-MM-DD), :data:`MISSING` for None."""
    return MISSING if value is None else value.isoformat()


def yuan(fen: int | None) -> str:
    """Integer fen as yuan with two decimals: ``2000`` -> ``20.00 yuan``; ``-50`` ->
    ``-0.50 yuan``."""
    if fen is None:
        return MISSING
    sign = "-" if fen < 0 else ""
    whole, cents = divmod(abs(int(fen)), 100)
    return f"{sign}{whole}.{cents:02d} yuan"


def text(value: object) -> str:
    """Any value for a person to read: :data:`MISSING` for None or an empty string."""
    if value is None or value == "":
        return MISSING
    return str(value)


def validity(start: date | None, end: date | None) -> str:
    """``valid 2026-01-01 – 2036-01-01``; "not yet personalised" before the dates exist."""
    if start is None and end is None:
        return "no validity yet (not personalised)"
    return f"valid {day(start)} – {day(end)}"
