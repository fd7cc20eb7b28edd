"""A prepared card: the complete personalisation script input for one card.

What the database says a card is (rebuilt from its rows, :func:`issuance.batches.dataprep.
prepared_for_item`): what the stations print and what quality control checks the chip
against. Its personalisation script is made by data preparation (:mod:`issuance.batches.
bulkprep`): the batch's perso file for the stations (every per-card key derived in the HSM
there, :mod:`issuance.batches.persofile`), or the bureau file. A card prepared just in time at
a station (no perso record) is personalised from this object, ``perso.personalise(reader,
key_service.card_crypto(prepared.key_ref), prepared.perso, profile)``, the keys derived in the
HSM while the script runs; :func:`issuance.batches.bureau.write_bureau_file` takes these too.
"""

from __future__ import annotations

from dataclasses import dataclass

from cardspec.keyscheme import KeySlot
from cardspec.perso import CardPersoData
from hsm.service import CardKeyRef


@dataclass(frozen=True)
class PreparedCard:
    card_id: int
    """``cards.id`` in the database."""
    chip_serial: str
    """Serial of the blank chip the card is made on (part of the card identification code)."""
    perso: CardPersoData
    """Every file content and initial PIN (PINs never logged: ``repr`` hides them)."""
    key_ref: CardKeyRef
    """Which per-card keys the HSM derives (card identification code, key version, algorithm)."""
    key_slots: tuple[KeySlot, ...]
    """The key slots the card profile declares for this card (KMC excluded)."""
    profile_name: str

    def __repr__(self) -> str:
        return f"PreparedCard(card_id={self.card_id}, serial={self.chip_serial})"
