"""Encoding stations: one card reader each (the encoding module of a card printer, a desk
reader, or a virtual reader with the emulated chips behind it).

A station takes a blank card (its :class:`Feeder` puts it in the reader), personalises it with
the card's keys derived in the HSM (:func:`cardspec.perso.personalise`), and runs the quality
check on the finished card over PC/SC:

* the chip serial is the one the card was prepared for;
* EF05 and EF06 read back equal the prepared data (which came from the database);
* the card answers INTERNAL AUTHENTICATE with a fresh challenge and the HSM confirms the answer
  (:meth:`hsm.service.KeyService.verify_internal_auth`): the card holds the right key;
* personalisation is locked (life cycle SECURED);
* the card number on the chip is the one printed on the face.

A failed check raises :class:`QualityCheckFailed` listing every problem. Several stations run
in parallel, one thread each: a :class:`~cardspec.pcsc.PcscReader` has one owner, and the HSM
adapter serialises PKCS#11 calls with its process lock.

:func:`open_stations` builds the stations from the settings: ``[readers] backend = "virtual"``
starts an isolated virtual reader stack (stopped on exit); ``pcsc`` uses the host's readers
(``[readers] names`` to choose), into which an operator or the printer's feeder puts the cards.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cardspec import cardops, perso
from cardspec.errors import CardSpecError
from cardspec.pcsc import PcscReader, card_present, list_readers
from cardspec.perso import PersoResult
from cardspec.profile import Access, CardProfile, Holder
from cardspec.profile.social import get_profile
from hsm.errors import HsmError
from hsm.service import KeyService
from issuance.batches.prepared import PreparedCard
from issuance.settings import Settings
from printers.errors import PrinterError


class StationError(PrinterError):
    """An encoding station cannot work (no reader, no card fed)."""

    code = "station_error"


class QualityCheckFailed(StationError):
    """The finished card failed the quality check; ``problems`` lists every reason."""

    code = "quality_check_failed"

    def __init__(self, message: str, problems: list[str]) -> None:
        super().__init__(f"{message}: {'; '.join(problems)}", problems=problems)
        self.problems = problems


class Feeder(Protocol):
    """Puts a card into the station's reader and takes it out."""

    def load(self, image: Path | None) -> None: ...

    def eject(self) -> None: ...


class VirtualFeeder:
    """Inserts the blank card's image into a slot of a virtual reader stack."""

    def __init__(self, stack: object, slot: int) -> None:
        self.stack = stack
        self.slot = slot

    def load(self, image: Path | None) -> None:
        if image is None or not image.exists():
            raise StationError(f"blank card image {image} not found")
        self.stack.insert(self.slot, image)  # type: ignore[attr-defined]

    def eject(self) -> None:
        self.stack.remove(self.slot)  # type: ignore[attr-defined]


class PresenceFeeder:
    """A real reader: waits until a card is present (put in by an operator or the printer)."""

    def __init__(self, reader: str, csock: str | None = None, timeout: float = 120.0) -> None:
        self.reader, self.csock, self.timeout = reader, csock, timeout

    def load(self, image: Path | None) -> None:
        deadline = time.monotonic() + self.timeout
        while not card_present(self.reader, self.csock):
            if time.monotonic() > deadline:
                raise StationError(f"no card fed into {self.reader} within {self.timeout:.0f} s")
            time.sleep(0.2)

    def eject(self) -> None:
        return None


class CountingReader:
    """A :class:`Reader` that counts the APDUs sent through it."""

    def __init__(self, reader: PcscReader) -> None:
        self.inner = reader
        self.name = reader.name
        self.count = 0

    def connect(self) -> bytes:
        return self.inner.connect()

    def transmit(self, command: bytes) -> bytes:
        self.count += 1
        return self.inner.transmit(command)

    def disconnect(self) -> None:
        self.inner.disconnect()


@dataclass(frozen=True)
class QualityReport:
    card_number: str
    card_identification_code: str
    chip_serial: str
    apdu_count: int


@dataclass
class EncodingStation:
    name: str
    reader: PcscReader
    feeder: Feeder

    def _profile(self, prepared: PreparedCard) -> CardProfile:
        return get_profile(prepared.profile_name)

    def load(self, image: Path | None) -> None:
        self.feeder.load(image)

    def eject(self) -> None:
        with contextlib.suppress(CardSpecError, StationError, OSError):
            self.reader.disconnect()
        self.feeder.eject()

    def personalise(self, prepared: PreparedCard, key_service: KeyService) -> PersoResult:
        """Personalise the blank card in the reader (one PC/SC transaction)."""
        profile = self._profile(prepared)
        self.reader.connect()
        try:
            with self.reader.transaction(), key_service.card_crypto(prepared.key_ref) as crypto:
                return perso.personalise(self.reader, crypto, prepared.perso, profile,
                                         connect=False)  # fmt: skip
        finally:
            self.reader.disconnect()

    def check(
        self, prepared: PreparedCard, key_service: KeyService, printed_card_number: str | None
    ) -> QualityReport:
        """Read the card back and check it (see the module docstring); raise
        :class:`QualityCheckFailed` with every problem found."""
        profile = self._profile(prepared)
        expected = prepared.perso
        problems: list[str] = []
        reader = CountingReader(self.reader)
        reader.connect()
        try:
            with self.reader.transaction():
                serial = cardops.chip_serial(reader).hex().upper()
                if serial != prepared.chip_serial.upper():
                    problems.append(f"chip serial {serial} is not {prepared.chip_serial}")
                needs_key = profile.ef("EF06")[1].read.kind is not Access.FREE
                with key_service.card_crypto(prepared.key_ref) as crypto:
                    public = cardops.read_card_public(
                        reader, profile, crypto=crypto if needs_key else None, connect=False
                    )
                if public.card_identification != expected.card_identification():
                    problems.append("EF05 (card identification) differs from the database")
                if public.holder is None or _holder(public.holder) != _holder(expected.holder):
                    problems.append("EF06 (holder) differs from the database")
                factor, random = os.urandom(8), os.urandom(8)
                try:
                    answer = cardops.internal_authenticate(reader, factor, random)
                    key_service.verify_internal_auth(prepared.key_ref, factor, random, answer)
                except (CardSpecError, HsmError) as exc:
                    problems.append(f"INTERNAL AUTHENTICATE: {exc}")
                if not cardops.is_locked(reader):
                    problems.append("personalisation is not locked")
                if printed_card_number is None:
                    problems.append("no printed face recorded for this card")
                elif public.card_number != printed_card_number:
                    problems.append(
                        f"chip card number {public.card_number} is not the printed "
                        f"{printed_card_number}"
                    )
        except CardSpecError as exc:
            problems.append(f"card unreadable: {exc}")
            public = None
        finally:
            self.reader.disconnect()
        if problems:
            raise QualityCheckFailed(f"card {expected.card_number} failed quality check", problems)
        assert public is not None
        return QualityReport(public.card_number, public.card_identification_code, serial,
                             reader.count)  # fmt: skip

    def close(self) -> None:
        self.reader.close()


def _holder(h: Holder) -> tuple[str, ...]:
    return (h.ssn, h.full_name.rstrip(), h.sex, h.ethnicity, h.birthplace, str(h.birth_date))


def stations_run_dir(settings: Settings, pid: int) -> Path:
    """Where the virtual reader stack of the worker process ``pid`` keeps its sockets.

    Under the data directory when the socket paths fit a unix socket address (108 bytes);
    otherwise (a deep data directory) a short directory in the system temp dir, named after
    the data directory's hash so that two data directories never share one."""
    where = settings.run_dir / f"stations-{pid}"
    longest = where / "pcscd" / "pcscd.comm"
    if len(str(longest.resolve()).encode()) <= 100:
        return where
    tag = hashlib.sha256(str(settings.run_dir.resolve()).encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"ykt-{tag}" / f"stations-{pid}"


@contextlib.contextmanager
def open_stations(
    settings: Settings, count: int | None = None, *, run_dir: Path | None = None
) -> Iterator[list[EncodingStation]]:
    """The encoding stations of these settings (see the module docstring)."""
    count = count or settings.readers.count
    backend = settings.readers.backend
    if backend == "virtual":
        from cardspec.virtual import VirtualReaderStack

        where = run_dir or stations_run_dir(settings, os.getpid())
        with VirtualReaderStack(where, count) as stack:
            stations = [
                EncodingStation(
                    f"station-{slot + 1}",
                    PcscReader(stack.reader_name(slot), csock=stack.csock),
                    VirtualFeeder(stack, slot),
                )
                for slot in range(count)
            ]
            try:
                yield stations
            finally:
                for st in stations:
                    st.close()
        return
    if backend == "pcsc":
        names = list_readers()
        if settings.readers.names:
            names = [n for n in names if any(want in n for want in settings.readers.names)]
        if not names:
            raise StationError("no PC/SC reader found for the encoding stations")
        stations = [
            EncodingStation(f"station-{i + 1}", PcscReader(n), PresenceFeeder(n))
            for i, n in enumerate(names[:count])
        ]
        try:
            yield stations
        finally:
            for st in stations:
                st.close()
        return
    raise StationError(f"reader backend {backend!r} has no encoding stations (virtual or pcsc)")
