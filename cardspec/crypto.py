"""The card-crypto port: every computation that needs one card's keys.

Personalisation, quality check and verification need cryptograms computed with a card's own
keys. In production the keys exist only inside the HSM (``hsm`` implements this port by deriving
each card key from the issuer master key inside the HSM); the software implementation below knows
the master keys in clear and is for tests, the emulator's factory and demos on throwaway keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from cardspec import keyscheme
from cardspec.errors import ProfileError
from cardspec.keyscheme import Algorithm, KeySlot


@runtime_checkable
class CardCrypto(Protocol):
    """Cryptography for one card, with its diversified keys."""

    algorithm: Algorithm

    def external_auth(self, slot: KeySlot, challenge: bytes) -> bytes:
        """EXTERNAL AUTHENTICATE cryptogram for the card's 8-byte challenge."""
        ...

    def mac_block(self, slot: KeySlot, data: bytes, iv: bytes) -> bytes:
        """Full last block of the secure-messaging MAC (send the first 4 bytes)."""
        ...

    def encrypt(self, slot: KeySlot, plaintext: bytes) -> bytes:
        """Sensitive data (``LD || data || 80..``) encrypted under the card key ``slot``."""
        ...

    def wrapped_card_key(self, slot: KeySlot) -> bytes:
        """The card key ``slot`` wrapped under the card's key-loading key KLK: the payload of
        WRITE KEY, ``keyscheme.wrap_card_key`` format (RFC 5649 AES key wrap of the 16-byte
        key value, 3DES with odd parity). Computed inside the HSM in production
        (``C_WrapKey(CKM_AES_KEY_WRAP_PAD)``); the card unwraps it with
        ``keyscheme.unwrap_card_key``."""
        ...

    def internal_auth_response(self, factor: bytes, random: bytes) -> bytes:
        """What this card's genuine chip answers to INTERNAL AUTHENTICATE."""
        ...


class SoftwareCardCrypto:
    """:class:`CardCrypto` with issuer master keys in clear memory. Tests and demos only."""

    def __init__(
        self,
        masters: Mapping[KeySlot, bytes],
        card_factors: tuple[bytes, ...],
        algorithm: Algorithm = Algorithm.DES3,
        emv_factors: tuple[bytes, ...] = (),
        klk_master: bytes | None = None,
    ) -> None:
        self.algorithm = algorithm
        self._masters = dict(masters)
        self._card_factors = card_factors
        self._emv_factors = emv_factors
        self._klk_master = klk_master

    def key_loading_key(self) -> bytes:
        """The card's key-loading key KLK (AES-128, ``keyscheme.derive_klk``): what the chip
        manufacturer loads into the blank next to the KMC."""
        if self._klk_master is None:
            raise ProfileError("no key-loading key master given (klk_master)")
        return keyscheme.derive_klk(self._klk_master, self._card_factors, self.algorithm)

    def card_key(self, slot: KeySlot) -> bytes:
        factors = self._emv_factors if slot.financial else self._card_factors
        return keyscheme.derive_card_key(self._masters[slot], factors, self.algorithm)

    def external_auth(self, slot: KeySlot, challenge: bytes) -> bytes:
        return keyscheme.external_auth_cryptogram(self.card_key(slot), challenge, self.algorithm)

    def mac_block(self, slot: KeySlot, data: bytes, iv: bytes) -> bytes:
        return keyscheme.sm_mac_block(self.card_key(slot), data, iv, self.algorithm)

    def encrypt(self, slot: KeySlot, plaintext: bytes) -> bytes:
        return keyscheme.encrypt_sensitive(self.card_key(slot), plaintext, self.algorithm)

    def wrapped_card_key(self, slot: KeySlot) -> bytes:
        # keyscheme.wrap_card_key: RFC 5649 under the KLK, the same bytes as the HSM adapter's
        # C_WrapKey(CKM_AES_KEY_WRAP_PAD) (RFC 5649 is deterministic).
        return keyscheme.wrap_card_key(self.key_loading_key(), self.card_key(slot), self.algorithm)

    def internal_auth_response(self, factor: bytes, random: bytes) -> bytes:
        return keyscheme.internal_auth_response(
            self.card_key(KeySlot.IRK), factor, random, self.algorithm
        )
