"""Bulk export of card keys for a card bureau (one bureau file at a time).

Design notes: ``docs/design/hsm.md`` (section ``hsm.export``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any

from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding
from pkcs11 import Attribute, KeyType, Mechanism

from cardspec import keyscheme
from cardspec.keyscheme import KLK_ALGORITHM, Algorithm, KeySlot
from hsm import ceremony, p11fast
from hsm import pkcs11 as p11
from hsm.chain import CardData, KeyChain
from hsm.errors import KeyNotFound
from hsm.ports import (
    KCV_BLOCK,
    BureauExport,
    BureauExporter,
    CardKeyRef,
    ClearKeys,
    FileKek,
    Pkcs11Keys,
)

__all__ = ["KCV_BLOCK", "BureauExport", "BureauExporter", "FileKek", "HsmBureauExporter",
           "SoftwareBureauExporter"]  # fmt: skip
#: Bulk export through hsm.p11fast: card keys only encrypt (KCV, PIN) and get wrapped.
_FAST_EXPORT = {
    alg: p11fast.key_template(alg, Attribute.ENCRYPT) for alg in (Algorithm.DES3, Algorithm.AES)
}
#: The card's KLK for the bureau: encrypts its KCV block, wrapped under the KEK.
_FAST_KLK = p11fast.key_template(KLK_ALGORITHM, Attribute.ENCRYPT)
#: A bureau file's KEK: session object, wraps card keys, encrypts its KCV block; extractable
#: (so that it can be wrapped under the transport key) but sensitive (never in clear).
_KEK_TEMPLATE: dict[Attribute, Any] = {
    Attribute.TOKEN: False,
    Attribute.PRIVATE: False,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: True,
    **p11.capabilities(Attribute.WRAP, Attribute.ENCRYPT),
}


class HsmBureauExporter:
    """:class:`BureauExporter` in the HSM: see "Bureau files" in the module docstring."""

    def __init__(self, service: Pkcs11Keys, transport_label: str) -> None:
        self._service = service
        self._label = ceremony.transport_label(transport_label)
        self._kek: Any = None
        self._kek_generation = -1
        self._kek_id = 0
        self._current: FileKek | None = None
        service.transport(self._label)  # fail early on an unknown transport key

    def __enter__(self) -> HsmBureauExporter:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        with self._service.token.use("destroying the file KEK"):
            if self._kek is not None and self._kek_generation == self._service.token.generation:
                self._kek.destroy()
            self._kek = None

    def _current_kek(self) -> Any:
        """The KEK of this module initialisation, generated and exported if new (LOCK held)."""
        token = self._service.token
        generation = token.generation
        if self._kek is None or generation != self._kek_generation:
            self._service.sync(generation)
            transport = self._service.transport(self._label)
            kek = token.session().generate_key(KeyType.AES, 128, template=_KEK_TEMPLATE)
            wrapped = bytes(transport.wrap_key(kek, mechanism=Mechanism.AES_KEY_WRAP_PAD))
            check = bytes(kek.encrypt(KCV_BLOCK[Algorithm.AES], mechanism=Mechanism.AES_ECB))
            self._kek, self._kek_generation = kek, generation
            self._kek_id += 1
            self._current = FileKek(self._kek_id, wrapped, check[:3])
        return self._kek

    def kek(self, kek_id: int) -> FileKek:
        if self._current is None or self._current.kek_id != kek_id:
            raise KeyNotFound(f"file KEK {kek_id} is not the current one")
        return self._current

    def export(
        self,
        ref: CardKeyRef,
        slots: Iterable[KeySlot],
        sensitive: Sequence[bytes] = (),
        under: KeySlot = KeySlot.KMC,
    ) -> BureauExport:
        fast = self._service.fast
        with self._service.token.use("exporting card keys for a bureau") as session:
            kek = self._current_kek()
            return self._export_fast(fast, session, kek, ref, list(slots), sensitive, under)

    def _export_fast(
        self,
        fast: p11fast.FastOps,
        session: Any,
        kek: Any,
        ref: CardKeyRef,
        slots: list[KeySlot],
        sensitive: Sequence[bytes],
        under: KeySlot,
    ) -> BureauExport:
        """Keys and the card's KLK wrapped under ``kek``, their KCVs and encrypted sensitive
        data, through :mod:`hsm.p11fast` (LOCK held, KEK current)."""
        service = self._service
        alg = ref.algorithm
        p11.check_algorithm(alg)
        service.sync(service.token.generation)
        sh = session.handle
        keys = KeyChain(fast, sh)
        data = CardData(ref, service.region_code)
        handles: dict[KeySlot, int] = {}
        klk_h = 0
        card_tmpl = _FAST_EXPORT[alg]
        try:
            for slot in (*slots, under) if sensitive and under not in slots else slots:
                base = service.card_master_synced(ref, slot).handle
                handles[slot] = keys.derive(base, alg, data.of(slot, alg), card_tmpl)
            klk_base = service.klk_master_synced(ref.key_version).handle
            klk_data = data.of(KeySlot.KMC, KLK_ALGORITHM)
            klk_h = keys.derive(klk_base, KLK_ALGORITHM, klk_data, _FAST_KLK)
            kek_h = kek.handle
            block = KCV_BLOCK[alg]
            wrapped = {slot: fast.wrap_kwp(sh, kek_h, handles[slot]) for slot in slots}
            kcvs = {slot: fast.encrypt_ecb(sh, handles[slot], alg, block)[:3] for slot in slots}
            klk_wrapped = fast.wrap_kwp(sh, kek_h, klk_h)
            klk_kcv = fast.encrypt_ecb(sh, klk_h, KLK_ALGORITHM, KCV_BLOCK[KLK_ALGORITHM])[:3]
            encrypted = []
            for plain in sensitive:
                if len(plain) > 255:
                    raise ValueError("sensitive data longer than 255 bytes")
                padded = keyscheme.pad_method2(bytes([len(plain)]) + plain, alg.block_size)
                encrypted.append(fast.encrypt_ecb(sh, handles[under], alg, padded))
        finally:
            for handle in (*handles.values(), *([klk_h] if klk_h else [])):
                fast.destroy(sh, handle)
            service.objects_destroyed(keys.destroyed + len(handles) + (1 if klk_h else 0))
        return BureauExport(
            wrapped, kcvs, tuple(encrypted), kek_id=self._kek_id, klk_wrapped=klk_wrapped,
            klk_kcv=klk_kcv,
        )  # fmt: skip


class SoftwareBureauExporter:
    """:class:`BureauExporter` of the software twin (one KEK per file)."""

    def __init__(self, service: ClearKeys, transport: bytes) -> None:
        self._service = service
        self._kek = bytearray(os.urandom(16))
        self._file_kek = FileKek(
            1,
            aes_key_wrap_with_padding(transport, bytes(self._kek)),
            keyscheme.kcv(bytes(self._kek), Algorithm.AES),
        )

    def __enter__(self) -> SoftwareBureauExporter:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._kek[:] = bytes(16)

    def kek(self, kek_id: int) -> FileKek:
        if kek_id != 1:
            raise KeyNotFound(f"file KEK {kek_id} is not the current one")
        return self._file_kek

    def export(
        self,
        ref: CardKeyRef,
        slots: Iterable[KeySlot],
        sensitive: Sequence[bytes] = (),
        under: KeySlot = KeySlot.KMC,
    ) -> BureauExport:
        crypto = self._service.card_crypto(ref)
        wrapped, kcvs = {}, {}
        for slot in slots:
            key = crypto.card_key(slot)
            if ref.algorithm is Algorithm.DES3:
                key = keyscheme.odd_parity(key)
            wrapped[slot] = aes_key_wrap_with_padding(bytes(self._kek), key)
            kcvs[slot] = keyscheme.kcv(key, ref.algorithm)
        encrypted = tuple(
            keyscheme.encrypt_sensitive(crypto.card_key(under), data, ref.algorithm)
            for data in sensitive
        )
        klk = crypto.key_loading_key()
        return BureauExport(
            wrapped, kcvs, encrypted, kek_id=1,
            klk_wrapped=aes_key_wrap_with_padding(bytes(self._kek), klk),
            klk_kcv=keyscheme.kcv(klk, KLK_ALGORITHM),
        )  # fmt: skip
