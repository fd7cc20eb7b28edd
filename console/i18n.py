"""Languages of the console: Chinese (``zh_CN``, the default) and English, from the gettext
catalogs ``console/locale/<locale>/LC_MESSAGES/*.po`` (``console.po`` and one file per page
module that adds messages: all are read, and a message in two files must say the same).

The catalogs are compiled with Babel **at import** (in memory, :func:`translations`): the
``.po`` files in the repository are the only source, so no compiled ``.mo`` can go stale.
Dates and times are shown in the issuer's time zone (``[issuer] time_zone``) with the offset.
"""

from __future__ import annotations

import functools
import io
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from babel.dates import format_datetime
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations

LOCALES = ("zh_CN", "en")
LOCALE_DIR = Path(__file__).parent / "locale"
DOMAIN = "console"


def catalog_path(locale: str) -> Path:
    return LOCALE_DIR / locale / "LC_MESSAGES" / f"{DOMAIN}.po"


def catalog_paths(locale: str) -> list[Path]:
    """Every catalog file of ``locale``, ``console.po`` first."""
    main = catalog_path(locale)
    return [main, *sorted(p for p in main.parent.glob("*.po") if p != main)]


@functools.cache
def translations(locale: str) -> Translations:
    """The compiled catalog of ``locale`` (English: the messages themselves)."""
    if locale not in LOCALES:
        raise ValueError(f"unknown console locale {locale!r}")
    paths = catalog_paths(locale)
    with paths[0].open("rb") as f:
        catalog = read_po(f, locale=locale, domain=DOMAIN)
    for path in paths[1:]:
        with path.open("rb") as f:
            more = read_po(f, locale=locale, domain=DOMAIN)
        for message in more:
            if not message.id:
                continue  # the header
            known = catalog.get(message.id, message.context)
            differs = known is not None and known.string != message.string
            if differs and known is not None and known.string and message.string:
                raise ValueError(f"{path.name}: {message.id!r} is translated differently in "
                                 f"another catalog of {locale}")  # fmt: skip
            if known is None or not known.string:  # an empty string: the message itself
                catalog[message.id] = message
    mo = io.BytesIO()
    write_mo(mo, catalog)
    mo.seek(0)
    return Translations(mo, domain=DOMAIN)


def pick(requested: str | None, default: str) -> str:
    return requested if requested in LOCALES else default


def when(value: datetime | None, locale: str, zone: str) -> str:
    """A stored (naive UTC) time in the issuer's time zone, with its offset."""
    if value is None:
        return ""
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return format_datetime(aware, "yyyy-MM-dd HH:mm:ss xxx", tzinfo=ZoneInfo(zone), locale=locale)
