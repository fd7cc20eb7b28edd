"""The reader at a bank branch desk (financial activation, :mod:`issuance.services.financial`),
chosen in the composition root by ``[readers] backend``, like the encoding stations:

* ``virtual`` (default): the holder's card is the emulator image of the chip
  (``<data_dir>/cards/<chip serial>.json``, written when the card was personalised), put in a
  one-reader :class:`readers.virtual.VirtualReaderStack` (isolated pcscd + vpcd) and reached
  through PC/SC like a real desk reader;
* ``pcsc``: the host's pcscd and a real reader (``--reader NAME`` or the first of
  ``[readers] names``) with the holder's card in it;
* ``inprocess``: the emulator image in this process (no PC/SC; tests and quick demos).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from cardspec.reader import InProcessReader, Reader
from issuance.errors import ConfigError, NotFound
from yikatong.settings import Settings


def card_image(settings: Settings, card_identification_code: str) -> Path:
    """The emulator image of the chip with this identification code (last 16 = serial)."""
    path = settings.cards_dir / f"{card_identification_code[-16:].upper()}.json"
    if not path.is_file():
        raise NotFound(f"no emulated chip image {path.name} under {settings.cards_dir}")
    return path


def _log_dir(settings: Settings) -> Path:
    """The desk's virtual stack logs (under the data directory)."""
    return settings.run_dir / f"branch-{os.getpid()}"


@contextlib.contextmanager
def open_branch_reader(
    settings: Settings, card_identification_code: str, reader_name: str | None = None
) -> Iterator[Reader]:
    """A reader with the holder's card in it (see the module docstring)."""
    backend = settings.readers.backend
    if backend == "inprocess":
        from cardspec.emulator import Card as EmulatedCard

        chip = EmulatedCard.load(card_image(settings, card_identification_code))
        yield InProcessReader(chip, name="in-process branch reader")
        return
    from readers.pcsc import PcscReader

    if backend == "virtual":
        from readers.virtual import VirtualReaderStack, short_run_dir

        logs = _log_dir(settings)
        with VirtualReaderStack(short_run_dir(logs), 1, log_dir=logs) as stack:
            stack.insert(0, card_image(settings, card_identification_code))
            reader = PcscReader(stack.reader_name(0), csock=stack.csock)
            try:
                yield reader
            finally:
                reader.close()
        return
    if backend == "pcsc":
        from readers.pcsc import list_readers

        names = list_readers(settings.readers.csock)
        wanted = [reader_name] if reader_name else list(settings.readers.names)
        if wanted:
            names = [n for n in names if any(w in n for w in wanted)]
        if not names:
            raise ConfigError("no PC/SC reader found at this desk (--reader NAME)")
        reader = PcscReader(names[0], csock=settings.readers.csock)
        try:
            yield reader
        finally:
            reader.close()
        return
    raise ConfigError(f"reader backend {backend!r} has no desk reader")
