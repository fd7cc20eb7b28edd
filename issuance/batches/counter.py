"""The counter's desk: one reader beside the clerk and the counter's card printer, making one
temporary card on the spot and blocking it when it comes back.

The temporary card is made exactly as a batch card is, one card at a time (the same
preparation :func:`issuance.batches.dataprep.prepare_card`, the same encoding station and
quality check :class:`issuance.batches.stations.EncodingStation`, the per-card keys derived in
the HSM for the card's own identification code), with the temporary card's profile (card
category "2", only the medical application:
``cardspec.profile.social_security_profile(temporary=True)``) and its own face
(:data:`printers.layout.TEMPORARY_LAYOUT`: "临时卡", its validity).

* ``[readers] backend = "virtual"`` (default): the desk reader is a virtual reader and the
  blank chip comes from the virtual stock (the emulated chips' manufacturer,
  :class:`issuance.batches.stock.VirtualBlankStock`); ``pcsc``: the clerk puts a blank chip
  of the delivered stock into the desk reader (bound to the card as at a station,
  :mod:`issuance.batches.blanks`).
* The face goes to ``[printer] backend`` (file spool by default), and the quality check reads
  its face code back against the chip.
* The returned chip is blocked with the card's own command (APPLICATION BLOCK MAC'd under the
  card's application master key DMK, derived in the HSM: :func:`cardspec.cardops.
  block_application`) after checking it is that card; the card then answers 6283 to the
  SELECT of its application and 6985 to INTERNAL AUTHENTICATE, so no terminal accepts it.

:class:`CounterDesk` implements :class:`issuance.services.temporary.TemporaryChipDesk`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from cardspec import cardops
from cardspec.errors import CardSpecError
from hsm.service import KeyService
from issuance.audit import Actor
from issuance.batches import dataprep
from issuance.batches.blanks import binds_at_station
from issuance.batches.pipeline import region_name, safe_job_id
from issuance.batches.stations import EncodingStation, PrintedFace, open_stations
from issuance.batches.stock import BlankStock
from issuance.errors import ConflictError, FieldProblem, ValidationError
from issuance.models import Card, Person
from issuance.settings import IssuanceConfig
from printers.faces import CardFace, render_back, render_front
from printers.layout import layout_for_profile
from printers.prepared import PreparedCard
from printers.spool import CardPrinter


@dataclass
class CounterDesk:
    """The desk reader (one encoding station), the counter's printer, the key service and the
    blank stock (see the module docstring)."""

    settings: IssuanceConfig
    key_service: KeyService
    stock: BlankStock
    station: EncodingStation
    printer: CardPrinter
    #: the chip serial read from the chip fed at :meth:`chip_serial` (stock that binds)
    _fed: str | None = None

    def chip_serial(self) -> bytes:
        """The serial of the chip the card will be made on: a new virtual chip, or the blank
        chip the clerk put into the desk reader (stock that binds at the station)."""
        if binds_at_station(self.stock):
            self.station.load(None)
            self._fed = self.station.fed_serial()
            return bytes.fromhex(self._fed)
        return self.stock.new_serial()

    def make_chip(
        self, session: Session, card: Card, actor: Actor, *, today: date
    ) -> dict[str, Any]:
        """Prepare, personalise, print and check the temporary card ``card`` (its chip serial
        recorded already, :meth:`chip_serial`); returns the audit details (chip serial,
        profile, APDU counts, print job: nothing personal). Raises on any failure: the caller's
        transaction is rolled back, the card and its deposit with it."""
        settings = self.settings
        profile = dataprep.card_profile(settings, card.algorithm, temporary=True)
        card.key_version = self.key_service.current_key_version(profile.algorithm)
        code = card.card_identification_code
        if code is None:
            raise ConflictError(f"temporary card {card.card_number} has no chip serial")
        serial = bytes.fromhex(code[-16:])
        if self._fed is not None:
            bind = getattr(self.stock, "bind", None)
            if bind is None:  # pragma: no cover - binds_at_station says it has one
                raise ConflictError("this blank stock does not bind chips at the desk")
            bind(session, self._fed, card, profile)
        prepared = dataprep.prepare_card(
            session, settings, self.key_service, card, serial, issue_date=today, profile=profile
        )
        crypto = None
        if self._fed is None:
            self.station.load(self.stock.make_blank(serial, prepared.key_ref, profile))
        else:
            crypto = self.stock.card_crypto(prepared)  # type: ignore[attr-defined]
        try:
            perso = self.station.personalise(prepared, self.key_service, crypto=crypto)
            printed, job = self._print(session, card, prepared)
            report = self.station.check(prepared, self.key_service, printed)
        finally:
            self.station.eject()
            self._fed = None
        return {
            "chip_serial": prepared.chip_serial, "profile": profile.name,
            "card_category": dataprep.TEMPORARY_CARD_CATEGORY,
            "perso_apdus": perso.apdu_count, "qc_apdus": report.apdu_count, "print_job": job,
        }  # fmt: skip

    def _print(
        self, session: Session, card: Card, prepared: PreparedCard
    ) -> tuple[PrintedFace, str]:
        person = session.get(Person, card.person_id)
        assert person is not None
        face = CardFace(
            name=person.name, ssn=person.citizen_id, card_number=card.card_number,
            issue_date=prepared.perso.issue_date, photo_jpeg=None,
            issuer_name=self.settings.issuer.name, bank_name="",
            region=region_name(person.region_code), expiry_date=prepared.perso.expiry_date,
        )  # fmt: skip
        dpi = self.settings.printer.dpi
        layout = layout_for_profile(prepared.profile_name)
        front, back = render_front(face, dpi, layout), render_back(face, dpi, layout)
        job = safe_job_id("temporary", card.card_number, prepared.chip_serial)
        result = self.printer.print_card(job, front, back)
        spooled = [Path(f) for f in result.files if str(f).endswith(".back.png")]
        if spooled:
            back_image = spooled[0]
        else:  # a printer without a spool file: keep the image that was sent, for QC
            back_image = self.settings.data_dir / "proofs" / f"{job}.back.png"
            back_image.parent.mkdir(parents=True, exist_ok=True)
            back.save(back_image, "PNG")
        box = layout.back.face_code.px(dpi) if layout.back.face_code is not None else None
        return PrintedFace(back_image, box, None, person.card_name), job

    def block_chip(self, session: Session, card: Card, actor: Actor) -> dict[str, Any]:
        """Block the returned chip of ``card`` (in the desk reader: the virtual backend loads
        the card's own image). Refused, and nothing changed, when the chip in the reader is
        another card's or cannot be blocked. Returns the audit details."""
        code = card.card_identification_code
        if code is None:
            raise ValidationError(
                "cannot block the chip", [FieldProblem("card", "this card has no chip recorded")]
            )
        profile = dataprep.card_profile(self.settings, card.algorithm, temporary=True)
        if not binds_at_station(self.stock):
            image = self.stock.image(code[-16:])
            if not image.exists():
                raise ValidationError(
                    "cannot block the chip",
                    [FieldProblem("card", f"no chip {code[-16:]} at this desk's virtual stock")],
                )
            self.station.load(image)
        else:
            self.station.load(None)
        reader = self.station.reader
        try:
            reader.connect()
            try:
                with reader.transaction():
                    public = cardops.read_card_public(reader, profile, connect=False)
                    if public.card_identification_code.upper() != code.upper():
                        raise ValidationError(
                            "cannot block the chip",
                            [FieldProblem("card", f"the chip in the reader is card "
                                                  f"{public.card_number}, not {card.card_number}")],
                        )  # fmt: skip
                    with self.key_service.card_crypto(dataprep.key_ref(card, code)) as crypto:
                        cardops.block_application(reader, crypto, profile=profile)
                    if not cardops.application_blocked(reader, profile):
                        raise ConflictError(f"the chip of {card.card_number} did not block")
            finally:
                reader.disconnect()
        except CardSpecError as exc:
            raise ConflictError(
                f"the chip of {card.card_number} could not be blocked: {exc}"
            ) from exc
        finally:
            with contextlib.suppress(Exception):
                self.station.eject()
        return {"chip_serial": code[-16:], "command": "APPLICATION BLOCK", "key": "DMK"}


@contextlib.contextmanager
def open_counter_desk(
    settings: IssuanceConfig,
    key_service: KeyService,
    stock: BlankStock,
    printer: CardPrinter,
    *,
    reader: str | None = None,
) -> Iterator[CounterDesk]:
    """The counter's desk on these adapters: one encoding station (``[readers] backend``: a
    virtual reader, its stack started here and stopped on exit; ``pcsc``: the desk reader,
    ``reader`` picking it by part of its name). The virtual stock's manufacturer key is made in
    the HSM if missing, as for a batch run."""
    if reader:
        readers = settings.readers.model_copy(update={"names": (reader,)})
        settings = settings.model_copy(update={"readers": readers})
    stock.ready()  # the virtual stock: its transport key in the HSM
    run_dir = None
    if settings.readers.backend == "virtual":
        from readers.virtual import short_run_dir

        run_dir = short_run_dir(settings.run_dir / f"counter-{os.getpid()}")
    with open_stations(settings, 1, run_dir=run_dir) as stations:
        yield CounterDesk(settings, key_service, stock, stations[0], printer)
