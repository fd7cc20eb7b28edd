"""A prepared card: the complete personalisation script input for one card.

Data preparation produces one :class:`PreparedCard` per card of a batch. Two consumers:

* in-house personalisation (``issuance.batches`` stations): ``perso.personalise(reader,
  key_service.card_crypto(prepared.key_ref), prepared.perso, profile)``: the per-card keys are
  derived inside the HSM while the script runs;
* the bureau file (``issuance.batches.bureau``): the same data with the per-card keys exported
  from the HSM wrapped under the bureau's transport key.
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
