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
from collections.abc import Callable, Iterator
from pathlib import Path

from sqlalchemy.orm import Session

from cardspec.reader import InProcessReader, Reader
from issuance.audit import Actor
from issuance.errors import ConfigError, NotFound
from issuance.services.financial import PinPad
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


def activate_at_desk(
    settings: Settings,
    scope: Callable[[], contextlib.AbstractContextManager[Session]],
    actor_of: Callable[[Session], Actor],
    card_id: int,
    pad: PinPad,
    *,
    identity_checked: bool,
    reader_name: str | None = None,
    card_auth: bool = True,
    bank_agency_id: int | None = None,
    announce: Callable[[str], None] = lambda _: None,
) -> str:
    """The one activation path at a branch desk, for ``ykt cards activate-financial`` and the
    desk station (``ykt branch desk``): everything checked before the holder types anything
    (:func:`issuance.services.financial.check_can_activate`), the card checked genuine against
    the HSM (``card_auth``), the holder's new PIN from ``pad`` through the weak-PIN rule
    (:class:`issuance.services.pins.StrengthCheckedPad`) set on the chip in the desk reader by
    the bank's issuer script (:func:`issuance.services.set_financial_pin`), then
    :func:`issuance.services.activate_financial`. ``scope`` opens a committed unit of work,
    ``actor_of`` gives the acting user in it. Returns the card number."""
    from issuance import services
    from issuance.services import financial, pin_counter, pins
    from issuance.services.common import find_card
    from yikatong.wiring import key_service_from_settings

    with scope() as s:  # check everything before the holder types anything
        actor = actor_of(s)
        c = find_card(s, card_id=card_id)
        financial.check_can_activate(s, c.id, actor, identity_checked=identity_checked)
        keys = key_service_from_settings(settings)
        check = financial.hsm_card_check(keys, c) if card_auth else None
        script = financial.script_keys(s, settings, keys, c)  # the bank's keys, PAN and PSN
        cic, number = c.card_identification_code, c.card_number
        holder = pin_counter.HolderFacts(c.person.citizen_id, c.person.birth_date)
    assert cic is not None
    checked_pad = pins.StrengthCheckedPad(pad, holder, settings)  # the weak-PIN rule
    with open_branch_reader(settings, cic, reader_name) as desk:
        announce(f"card {number} in {desk.name}: the holder sets the bank PIN")
        evidence = services.set_financial_pin(desk, cic, checked_pad, script, authenticate=check)
    with scope() as s:
        services.activate_financial(
            s, card_id, actor_of(s), identity_checked=identity_checked, pin=evidence,
            bank_agency_id=bank_agency_id,
        )  # fmt: skip
    return number
