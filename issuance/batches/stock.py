"""Blank chip stock: where the blank cards the stations personalise come from.

Design notes: ``docs/design/batches.md`` (section ``issuance.batches.stock``).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Protocol

from cardspec import keyscheme
from cardspec.emulator import blank_card
from cardspec.keyscheme import Algorithm, KeySlot
from cardspec.profile import CardProfile
from hsm import ceremony, softhsm
from hsm import pkcs11 as p11
from hsm.config import HsmConfig
from hsm.service import CardKeyRef, KeyService
from issuance.errors import ConfigError, IntegrityError
from issuance.settings import IssuerSettings

MANUFACTURER = "manufacturer"
_LOCK = threading.Lock()


class BlankStock(Protocol):
    """Gives a blank chip for a card and says where the station finds it."""

    #: True: the chips exist before data preparation and the card is bound to the chip fed
    #: into the station (:class:`issuance.batches.blanks.StationBoundStock`).
    binds_at_station: bool

    def ready(self) -> None:
        """Make what the stock needs before chips are asked of it (the virtual manufacturer:
        its transport key in the HSM)."""
        ...

    def new_serial(self) -> bytes: ...

    def make_blank(self, serial: bytes, ref: CardKeyRef, profile: CardProfile) -> Path: ...

    def image(self, serial: str) -> Path: ...

    def ensure_blank(self, serial: str, ref: CardKeyRef, profile: CardProfile) -> Path:
        """The image of blank chip ``serial`` for the station's feeder, made now if data
        preparation left it to the station."""
        ...


class ManufacturerConfig(Protocol):
    """What the virtual chip manufacturer reads: the data directory (its copies of the transport
    keys, the chips' images), the issuer's card algorithm and the HSM's own config (it makes
    its transport key there). The root settings (:class:`yikatong.settings.Settings`) are one."""

    @property
    def data_dir(self) -> Path: ...
    @property
    def cards_dir(self) -> Path: ...
    @property
    def issuer(self) -> IssuerSettings: ...
    def hsm_config(self) -> HsmConfig: ...


def manufacturer_name(card_algorithm: Algorithm | str) -> str:
    """The virtual stock's transport key for cards of ``card_algorithm``: ``manufacturer``
    (AES: 3DES and AES cards), ``manufacturer-sm4`` (SM4 cards; ``keyscheme.klk_algorithm``)."""
    alg = keyscheme.klk_algorithm(Algorithm(str(card_algorithm)))
    return MANUFACTURER if alg is Algorithm.AES else f"{MANUFACTURER}-{alg.value}"


def manufacturer_key_path(
    settings: ManufacturerConfig, card_algorithm: Algorithm | str = "3des"
) -> Path:
    return settings.data_dir / "stock" / f"{manufacturer_name(card_algorithm)}.key"


def ensure_manufacturer_key(
    settings: ManufacturerConfig, card_algorithm: Algorithm | str | None = None
) -> bool:
    """Create the transport key for cards of ``card_algorithm`` (default ``[issuer]
    card_algorithm``; :func:`manufacturer_name`) in the HSM (random components from the HSM)
    and the manufacturer's copy, if missing. Returns True if it was created."""
    card_alg = Algorithm(str(card_algorithm or settings.issuer.card_algorithm))
    name = manufacturer_name(card_alg)
    path = manufacturer_key_path(settings, card_alg)
    config = settings.hsm_config()
    if config.is_softhsm:
        softhsm.write_conf(config)
    token = p11.open_token(config)
    label = ceremony.transport_label(name)
    with _LOCK:
        with token.use("looking up the manufacturer transport key") as session:
            exists = p11.exists(session, label)
        if exists:
            if not path.exists():
                raise ConfigError(
                    f"the HSM has {label} but the blank-stock maker's copy {path} is missing"
                )
            return False
        _, parts = ceremony.generate_transport_key(
            token, name, 2, keyscheme.klk_algorithm(card_alg)
        )
        key = bytearray(16)
        for comp, _kcv in parts:
            for i, b in enumerate(comp):
                key[i] ^= b
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(bytes(key).hex())
        key[:] = bytes(16)
        return True


class VirtualBlankStock:
    """The emulated chips' manufacturer (see the module docstring)."""

    binds_at_station = False

    def __init__(self, settings: ManufacturerConfig, key_service: KeyService) -> None:
        self.settings = settings
        self.key_service = key_service
        self.directory = settings.cards_dir
        self._transport: dict[str, bytes] = {}

    def ready(self) -> None:
        ensure_manufacturer_key(self.settings)

    def _transport_key(self, card_alg: Algorithm) -> bytes:
        name = manufacturer_name(card_alg)
        key = self._transport.get(name)
        if key is None:
            path = manufacturer_key_path(self.settings, card_alg)
            if not path.exists() and name != MANUFACTURER:  # e.g. the first SM4 card
                ensure_manufacturer_key(self.settings, card_alg)
            try:
                key = self._transport[name] = bytes.fromhex(path.read_text().strip())
            except (OSError, ValueError) as exc:
                raise ConfigError(f"no manufacturer transport key at {path}: {exc}") from exc
        return key

    def new_serial(self) -> bytes:
        return os.urandom(8)

    def image(self, serial: str) -> Path:
        return self.directory / f"{serial.upper()}.json"

    def ensure_blank(self, serial: str, ref: CardKeyRef, profile: CardProfile) -> Path:
        """The image of blank chip ``serial``, made now if missing: bulk data preparation
        (:mod:`issuance.batches.bulkprep`) records the chip and leaves making the blank, the
        manufacturer's work, to the moment a station loads it."""
        path = self.image(serial)
        if not path.exists():
            self.make_blank(bytes.fromhex(serial), ref, profile)
        return path

    def make_blank(self, serial: bytes, ref: CardKeyRef, profile: CardProfile) -> Path:
        path = self.image(serial.hex())
        self.directory.mkdir(parents=True, exist_ok=True)
        return self.make_blank_at(path, serial, ref, profile)

    def make_blank_at(
        self, path: Path, serial: bytes, ref: CardKeyRef, profile: CardProfile
    ) -> Path:
        """The blank chip ``serial`` for the card ``ref`` as an image at ``path``."""
        alg = profile.algorithm
        transport = self._transport_key(alg)
        name = manufacturer_name(alg)
        wrapped = self.key_service.export_card_keys(ref, [KeySlot.KMC], name)[KeySlot.KMC]
        wrapped_klk = self.key_service.export_key_loading_key(ref, name)
        try:  # the key-loading rule (keyscheme.wrap_card_key), as the chip maker unwraps it
            kmc = keyscheme.unwrap_card_key(transport, wrapped, alg)
        except ValueError as exc:
            raise IntegrityError(f"the KMC does not unwrap under the {name} key") from exc
        try:
            klk = keyscheme.unwrap_card_key(transport, wrapped_klk, keyscheme.klk_algorithm(alg))
        except ValueError as exc:
            raise IntegrityError(f"the KLK does not unwrap under the {name} key") from exc
        blank_card(serial, kmc, alg, klk=klk, profile=profile, path=path)
        return path
