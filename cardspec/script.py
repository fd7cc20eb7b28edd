"""A card's personalisation script and its runner: what a bureau's personalisation machine
does with a bureau file line and what an encoding station does with an in-house perso record
(both prepared in the HSM by data preparation, see :mod:`issuance.batches.bulkprep`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

from cardspec import perso, sm
from cardspec.apdu import CommandApdu
from cardspec.cardops import (
    ApduCounter,
    check_fci_algorithm,
    external_authenticate,
    select_df,
    send,
)
from cardspec.crypto import CardCrypto
from cardspec.errors import CardNotFoundError, CardStateError, ProfileError
from cardspec.keyscheme import Algorithm, KeySlot
from cardspec.profile import get_profile
from cardspec.reader import Reader


class ScriptMismatch(ProfileError):
    """The script's algorithm is not its card profile's."""


class ScriptKey(Protocol):
    @property
    def slot(self) -> KeySlot: ...

    @property
    def key_id(self) -> int: ...


class ScriptFile(Protocol):
    @property
    def df(self) -> str: ...

    @property
    def ef(self) -> str: ...

    @property
    def sfi(self) -> int: ...

    @property
    def records(self) -> tuple[bytes, ...]: ...


class ScriptPin(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def ref(self) -> int: ...

    @property
    def encrypted(self) -> bytes: ...


class PersoScript(Protocol):
    """A card's personalisation script: a bureau file line
    (:class:`issuance.batches.bureau.BureauCard`) or an in-house perso record
    (:class:`issuance.batches.persofile.PersoRecord`)."""

    @property
    def card_id(self) -> int: ...

    @property
    def card_identification_code(self) -> str: ...

    @property
    def profile_name(self) -> str: ...

    @property
    def algorithm(self) -> Algorithm: ...

    @property
    def keys(self) -> Sequence[ScriptKey]: ...

    @property
    def files(self) -> Sequence[ScriptFile]: ...

    @property
    def pins(self) -> Sequence[ScriptPin]: ...


def run_script(
    reader: Reader, card: PersoScript, crypto: CardCrypto, *, connect: bool = True
) -> perso.PersoResult:
    """Run a card's personalisation script: the same lean sequence as
    :func:`cardspec.perso.personalise` (SELECT, EXTERNAL AUTHENTICATE with KMC, WRITE KEY,
    UPDATE RECORD, SET PIN with the issuer's encrypted payload, SET STATUS SECURED), driven by
    the script instead of the clear card data. :class:`ScriptMismatch` when the script's
    algorithm is not its profile's."""
    profile = get_profile(card.profile_name)
    if profile.algorithm is not card.algorithm:
        raise ScriptMismatch(f"card {card.card_id}: algorithm differs from its profile")
    start = time.perf_counter()
    if connect:
        reader.connect()
    tx = ApduCounter(reader)
    loaded: list[KeySlot] = []
    try:
        check_fci_algorithm(select_df(tx, profile, "SSSE", fci=True), profile)
        current = profile.df_path("SSSE")
        try:
            channel: sm.TerminalChannel = external_authenticate(tx, crypto, KeySlot.KMC, profile)
        except CardNotFoundError as exc:
            raise CardStateError(
                "card has no transport key: already personalised", exc.sw, command=exc.command
            ) from exc
        for key in card.keys:
            if key.slot is KeySlot.KMC:
                continue
            wrapped = crypto.wrapped_card_key(key.slot)
            cmd = channel.wrap(CommandApdu(0x80, 0xD4, 0x00, key.key_id, wrapped))
            send(tx, cmd, f"WRITE KEY {key.slot.value}")
            loaded.append(key.slot)
        for f in card.files:
            if f.df != current:
                select_df(tx, profile, f.df)
                current = f.df
            for n, record in enumerate(f.records, start=1):
                cmd = channel.wrap(CommandApdu(0x00, 0xDC, n, (f.sfi << 3) | 0x04, record))
                send(tx, cmd, f"UPDATE RECORD {f.ef}/{n}")
        for pin in card.pins:
            cmd = channel.wrap(CommandApdu(0x80, 0xD4, 0x01, pin.ref, pin.encrypted))
            send(tx, cmd, f"SET PIN {pin.name}")
        send(tx, channel.wrap(CommandApdu(0x80, 0xF0, 0x80, 0x0F)), "SET STATUS SECURED")
    finally:
        if connect:
            reader.disconnect()
    return perso.PersoResult(
        card_identification_code=card.card_identification_code,
        apdu_count=tx.count,
        duration_s=time.perf_counter() - start,
        keys_loaded=tuple(loaded),
    )
