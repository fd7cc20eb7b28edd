"""Encoding stations: one card reader each (the encoding module of a card printer, a desk
reader, or a virtual reader with the emulated chips behind it).

Design notes: ``docs/design/printers.md`` (section ``issuance.batches.stations``).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from cardspec import cardops, perso
from cardspec.errors import CardSpecError
from cardspec.perso import PersoResult
from cardspec.profile import Access, CardProfile
from cardspec.profile.model import decode_records
from cardspec.profile.social import get_profile
from hsm.errors import HsmError
from hsm.service import CardCryptoSession, KeyService
from issuance.errors import StationError
from printers.facecode import FaceCodeError, FaceData, decode_file
from printers.prepared import PreparedCard
from readers.pcsc import PcscReader, card_present, list_readers


class ReaderSection(Protocol):
    """What the stations read of ``[readers]`` (:class:`issuance.settings.ReaderSettings`)."""

    @property
    def backend(self) -> Literal["virtual", "pcsc", "inprocess"]: ...
    @property
    def count(self) -> int: ...
    @property
    def names(self) -> tuple[str, ...]: ...
    @property
    def csock(self) -> Path | None: ...
    @property
    def feed_timeout_seconds(self) -> float: ...


class StationSettings(Protocol):
    """The frozen settings the stations are opened from (the readers and the run directory)."""

    @property
    def readers(self) -> ReaderSection: ...
    @property
    def run_dir(self) -> Path: ...


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


class NoCardFed(StationError):
    """No card was fed into the station's reader in time (nothing was done to any chip)."""

    code = "no_card_fed"


class PresenceFeeder:
    """A real reader: waits until a card is present (put in by an operator or the printer's
    feeder), at most ``timeout`` seconds (kept well below the lease of the card being made:
    the pipeline renews the lease meanwhile, and gives the card back if none comes).

    A card the station has dealt with (finished, spoiled or refused) stays in the reader until
    it is taken out; the next :meth:`load` waits for *another* card. The feeder knows the card
    in hand by a PC/SC connection of its own opened on it (:meth:`handled`): that handle
    answers as long as the card stays in and fails once it has been removed, even if the
    same card was put back at once (``SCARD_W_REMOVED_CARD``), so a refused chip fed again is
    seen again. A card that cannot even be connected to (mute) is waited out by its absence.
    """

    def __init__(self, reader: str, csock: str | Path | None = None, timeout: float = 30.0) -> None:
        self.reader, self.csock, self.timeout = reader, csock, timeout
        self._marker: PcscReader | None = None
        self._await_absence = False
        #: a card was loaded and the station has not marked it yet (see :meth:`eject`)
        self._unmarked = False

    def handled(self) -> None:
        """The card now in the reader has been taken by the station: later loads wait for it
        to be replaced."""
        self._unmarked = False
        if self._marker is None:
            self._marker = PcscReader(self.reader, csock=self.csock)
        try:
            self._marker.connect()
            self._await_absence = False
        except CardSpecError:
            self._marker.disconnect()
            self._await_absence = True

    def in_hand(self) -> bool:
        """Whether the card the station dealt with last is still in the reader."""
        if self._marker is not None and self._marker.connected:
            try:
                self._marker.atr()
                return True
            except CardSpecError:  # removed (or reset): that card is gone
                self._marker.disconnect()
                return False
        if self._await_absence:
            if card_present(self.reader, self.csock):
                return True
            self._await_absence = False
        return False

    def load(self, image: Path | None, *, cancelled: Callable[[], bool] | None = None) -> None:
        """Wait for a new card; ``cancelled`` (asked twice a second): stop waiting early
        (:class:`NoCardFed`), e.g. when the batch has nothing left to make."""
        deadline = time.monotonic() + self.timeout
        next_ask = time.monotonic() + 0.5

        def give_up(message: str) -> None:
            nonlocal next_ask
            now = time.monotonic()
            if now > deadline:
                raise NoCardFed(message)
            if cancelled is not None and now > next_ask:
                next_ask = now + 0.5
                if cancelled():
                    raise NoCardFed(f"stopped waiting for a card in {self.reader}")
            time.sleep(0.05)

        while self.in_hand():
            give_up(f"the last card is still in {self.reader}: take it out")
        while not card_present(self.reader, self.csock):
            give_up(f"no card fed into {self.reader} within {self.timeout:.0f} s")
        self._unmarked = True

    def wait_removed(self, timeout: float | None = None) -> bool:
        """Wait until the card dealt with is taken out (True) or ``timeout`` passes (False)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while self.in_hand() or (self._marker is None and card_present(self.reader, self.csock)):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def eject(self) -> None:
        """A real reader cannot eject: the card stays until taken out. A card loaded and
        worked on without being marked (personalised from an image: virtual stock on real
        readers) is marked here so that the next load does not take it again; a card put in
        after the station was done (a refused chip replaced at once) is left alone."""
        if self._unmarked and card_present(self.reader, self.csock):
            self.handled()
        self._unmarked = False

    def close(self) -> None:
        if self._marker is not None:
            self._marker.close()
            self._marker = None


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
    #: What the printed face says (decoded from its face code).
    face: FaceData | None = None


@dataclass(frozen=True)
class PrintedFace:
    """What the pipeline printed for a card, for the quality check to read back."""

    back_image: Path
    """The printed back (the spooled PNG, or the image sent to the printer)."""
    code_box: tuple[int, int, int, int] | None
    """Where the face code is on it (pixels), None: search the whole image."""
    photo_sha256: str | None
    """SHA-256 of the photo the database holds for the card (None: no photo)."""
    chip_name: str | None = None
    """The name the chip holds when the printed (true) name has characters outside GBK: the
    issuer's recorded substitute (``issuance.cardname``); None: the chip holds the printed
    name."""


@dataclass
class EncodingStation:
    name: str
    reader: PcscReader
    feeder: Feeder

    def _profile(self, prepared: PreparedCard) -> CardProfile:
        return get_profile(prepared.profile_name)

    def load(self, image: Path | None, *, cancelled: Callable[[], bool] | None = None) -> None:
        """Have the card put into the reader (``image``: the virtual stock's blank; None: a
        real reader's next card, see :class:`PresenceFeeder` for ``cancelled``)."""
        if cancelled is not None and isinstance(self.feeder, PresenceFeeder):
            self.feeder.load(image, cancelled=cancelled)
        else:
            self.feeder.load(image)

    def eject(self) -> None:
        with contextlib.suppress(CardSpecError, StationError, OSError):
            self.reader.disconnect()
        self.feeder.eject()

    def personalise(
        self,
        prepared: PreparedCard,
        key_service: KeyService,
        *,
        crypto: CardCryptoSession | None = None,
    ) -> PersoResult:
        """Personalise the blank card in the reader (one PC/SC transaction). ``crypto``: the
        card's keys when the stock provides the chip's transport keys (manufacturer stock);
        default: every key derived in the HSM for ``prepared.key_ref``. An SM4 card also gets
        its SM2 key pair and the certificates signed by the key service's SM2 key (``sign_sm2``,
        the issuer's key in the HSM; ``cardspec.perso``)."""
        profile = self._profile(prepared)
        certifier = perso.sm2_certifier(profile, key_service)
        self.reader.connect()
        try:
            with (
                self.reader.transaction(),
                crypto or key_service.card_crypto(prepared.key_ref) as session,
            ):
                return perso.personalise(self.reader, session, prepared.perso, profile,
                                         connect=False, certifier=certifier)  # fmt: skip
        finally:
            self.reader.disconnect()

    def wait_removed(self, timeout: float | None = None) -> bool:
        """Wait until the card is taken out of the reader (real readers; virtual: at once)."""
        waiter = getattr(self.feeder, "wait_removed", None)
        return True if waiter is None else bool(waiter(timeout))

    def fed_serial(self) -> str:
        """The chip serial of the card fed into the reader (GET DATA DF12; blank cards answer
        too). The card is then the station's card in hand (:meth:`PresenceFeeder.handled`),
        also when its serial cannot be read (:class:`~cardspec.errors.CardSpecError`)."""
        try:
            self.reader.connect()
            return cardops.chip_serial(self.reader).hex().upper()
        finally:
            self.reader.disconnect()
            handled = getattr(self.feeder, "handled", None)
            if handled is not None:
                handled()

    def check(
        self, prepared: PreparedCard, key_service: KeyService, printed: PrintedFace | None
    ) -> QualityReport:
        """Read the card back and check it (see the module docstring); raise
        :class:`QualityCheckFailed` with every problem found."""
        profile = self._profile(prepared)
        expected = prepared.perso
        plan = perso.plan_records(expected, profile)
        problems: list[str] = []
        read: dict[str, list[bytes]] = {}
        reader = CountingReader(self.reader)
        reader.connect()
        serial = ""
        try:
            with self.reader.transaction():
                serial = cardops.chip_serial(reader).hex().upper()
                if serial != prepared.chip_serial.upper():
                    problems.append(f"chip serial {serial} is not {prepared.chip_serial}")
                if not cardops.is_locked(reader):
                    problems.append("personalisation is not locked")
                problems += _pin_counters(reader, profile)
                with key_service.card_crypto(prepared.key_ref) as crypto:
                    read = _read_files(reader, profile, plan, crypto, expected.initial_pin)
                    # back in the social security DF (left selected by _read_files' first DF
                    # only if nothing else was read): INTERNAL AUTHENTICATE with a fresh random
                    cardops.select_df(reader, profile, "SSSE")
                    factor, random = os.urandom(8), os.urandom(8)
                    try:
                        answer = cardops.internal_authenticate(reader, factor, random)
                        key_service.verify_internal_auth(prepared.key_ref, factor, random, answer)
                    except (CardSpecError, HsmError) as exc:
                        problems.append(f"INTERNAL AUTHENTICATE: {exc}")
        except CardSpecError as exc:
            problems.append(f"card unreadable: {exc}")
        finally:
            self.reader.disconnect()
        for ef_name, records in plan.items():
            got = read.get(ef_name)
            if got is None:
                problems.append(f"{ef_name} could not be read back")
            elif got != records:
                differing = [n for n, (a, b) in enumerate(zip(got, records, strict=False), 1)
                             if a != b] or [min(len(got), len(records)) + 1]  # fmt: skip
                problems.append(f"{ef_name} differs from the database (record {differing[0]})")
        face: FaceData | None = None
        if printed is None:
            problems.append("no printed face recorded for this card")
        else:
            try:
                face = decode_file(printed.back_image, printed.code_box)
            except FaceCodeError as exc:
                problems.append(f"printed face: {exc}")
            else:
                problems += _face_problems(face, profile, read, printed.photo_sha256,
                                           printed.chip_name)  # fmt: skip
        if problems:
            raise QualityCheckFailed(f"card {expected.card_number} failed quality check", problems)
        return QualityReport(expected.card_number, expected.card_identification_code, serial,
                             reader.count, face)  # fmt: skip

    def close(self) -> None:
        self.reader.close()
        close = getattr(self.feeder, "close", None)
        if close is not None:
            close()


def _pin_counters(reader: CountingReader, profile: CardProfile) -> list[str]:
    """Every PIN of the profile set, with its full try counter; initial PINs still to be
    changed (checked before any VERIFY, which would reset a counter)."""
    problems = []
    status = cardops.pin_status(reader, profile)
    for _, spec in profile.pin_specs():
        st = status.get(spec.name)
        if st is None:
            problems.append(f"PIN {spec.name} is not set")
            continue
        if st.tries_left != spec.tries:
            problems.append(f"PIN {spec.name} has {st.tries_left} tries left, not {spec.tries}")
        if spec.initial_must_change and not st.must_change:
            problems.append(f"PIN {spec.name} is not marked as an initial PIN to change")
    return problems


def _read_files(
    reader: CountingReader,
    profile: CardProfile,
    plan: dict[str, list[bytes]],
    crypto: object,
    pin: str,
) -> dict[str, list[bytes]]:
    """The records of every planned EF, read back: first the files free to read (or with a
    key: EXTERNAL AUTHENTICATE), then — only if the card identification read back is the
    planned one, so a wrong card's PIN counter is never touched — VERIFY with the initial PIN
    and the PIN-protected files. One SELECT per DF change; a file that cannot be read is
    left out (reported by the caller)."""
    out: dict[str, list[bytes]] = {}
    state = {"current": "", "verified": set[str]()}

    def needs_pin(ef_name: str) -> bool:
        rule = profile.ef(ef_name)[1].read
        return rule.kind in (Access.PIN, Access.PIN_OR_KEY, Access.PIN_AND_KEY) and bool(rule.pin)

    def read(ef_name: str, records: list[bytes]) -> None:
        path, ef = profile.ef(ef_name)
        if path != state["current"]:
            cardops.select_df(reader, profile, path)
            state["current"] = path
        rule = ef.read
        verified: set[str] = state["verified"]  # type: ignore[assignment]
        if needs_pin(ef_name) and rule.pin and rule.pin not in verified:
            cardops.verify_pin(reader, pin, pin_name=rule.pin, profile=profile, select=False)
            verified.add(rule.pin)
        if rule.kind in (Access.KEY, Access.PIN_AND_KEY) and rule.key is not None:
            cardops.external_authenticate(reader, crypto, rule.key, profile)  # type: ignore[arg-type]
        if ef.sfi is None:
            raise QualityCheckFailed("profile", [f"{ef.name} has no SFI: cannot be read back"])
        out[ef_name] = [
            cardops.read_record(reader, ef.sfi, n, f"READ RECORD {ef.name}/{n}")
            for n in range(1, len(records) + 1)
        ]

    free = [(n, r) for n, r in plan.items() if not needs_pin(n)]
    protected = [(n, r) for n, r in plan.items() if needs_pin(n)]
    for ef_name, records in free:
        try:
            read(ef_name, records)
        except CardSpecError:
            state["current"] = ""
    if out.get("EF05") == plan.get("EF05"):
        for ef_name, records in protected:
            try:
                read(ef_name, records)
            except CardSpecError:
                state["current"] = ""
    return out


def _face_problems(
    face: FaceData,
    profile: CardProfile,
    read: dict[str, list[bytes]],
    photo_sha256: str | None,
    chip_name: str | None = None,
) -> list[str]:
    """The printed face (decoded) against the chip (read back) and the database's photo.
    ``chip_name``: the name the chip must hold instead of the printed one (a name outside
    GBK, :class:`PrintedFace`)."""
    problems: list[str] = []
    try:
        ident = decode_records(profile.ef("EF05")[1], read["EF05"])
        holder = decode_records(profile.ef("EF06")[1], read["EF06"])
    except Exception as exc:  # the records differ already (reported): nothing to compare to
        return [f"printed face not compared: chip data undecodable ({exc})"]
    name = (str(holder.get("name", "")).rstrip() + str(holder.get("name_extension") or "")).rstrip()
    validity = f"{ident['issue_date']:%Y.%m.%d}-{ident['expiry_date']:%Y.%m.%d}"
    pairs = (
        ("card number", face.card_number, ident["card_number"]),
        ("social security number", face.ssn, holder["ssn"]),
        ("name", chip_name or face.name, name),
        ("issue date", face.issue_date, ident["issue_date"]),
        ("validity", face.validity, validity),
    )
    for what, printed, chip in pairs:
        if printed != chip:
            problems.append(f"printed {what} {printed!s} is not the chip's {chip!s}")
    want = photo_sha256[: len(face.photo_sha256 or "")] if photo_sha256 else None
    if (face.photo_sha256 or None) != (want or None):
        problems.append("printed photo is not the card's photo in the database")
    return problems


def stations_log_dir(settings: StationSettings, pid: int) -> Path:
    """Where the virtual reader stack of the worker process ``pid`` writes its logs (always
    under the data directory)."""
    return settings.run_dir / f"stations-{pid}"


def stations_run_dir(settings: StationSettings, pid: int) -> Path:
    """Where the virtual reader stack of the worker process ``pid`` keeps its sockets: its log
    directory when the socket paths fit a unix socket address, else a short directory in the
    system temp dir (:func:`readers.virtual.short_run_dir`)."""
    from readers.virtual import short_run_dir

    return short_run_dir(stations_log_dir(settings, pid))


@contextlib.contextmanager
def open_stations(
    settings: StationSettings,
    count: int | None = None,
    *,
    run_dir: Path | None = None,
    feed_timeout: float | None = None,
) -> Iterator[list[EncodingStation]]:
    """The encoding stations of these settings (see the module docstring)."""
    count = count or settings.readers.count
    backend = settings.readers.backend
    if backend == "virtual":
        from readers.virtual import VirtualReaderStack

        where = run_dir or stations_run_dir(settings, os.getpid())
        logs = run_dir or stations_log_dir(settings, os.getpid())
        with VirtualReaderStack(where, count, log_dir=logs) as stack:
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
        csock = settings.readers.csock
        names = list_readers(csock)
        if settings.readers.names:
            names = [n for n in names if any(want in n for want in settings.readers.names)]
        if not names:
            raise StationError("no PC/SC reader found for the encoding stations")
        timeout = feed_timeout or settings.readers.feed_timeout_seconds
        stations = [
            EncodingStation(f"station-{i + 1}", PcscReader(n, csock=csock),
                            PresenceFeeder(n, csock, timeout))
            for i, n in enumerate(names[:count])
        ]  # fmt: skip
        try:
            yield stations
        finally:
            for st in stations:
                st.close()
        return
    raise StationError(f"reader backend {backend!r} has no encoding stations (virtual or pcsc)")
