"""The persistent part of an emulated card (what a chip keeps in EEPROM), as a JSON image.

The image holds the card's keys and PIN reference data as the chip would: it is a *test
double* of a chip, for demos, tests and the virtual reader, never a place for production keys.
PINs are stored as ``SHA-256(chip serial || PIN block)`` so an image file does not show them.
Saving writes a temporary file in the same directory and renames it over the old one
(atomic on POSIX), with mode 0600.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from cardspec.errors import ImageError
from cardspec.keyscheme import Algorithm, KeySlot

IMAGE_FORMAT = "ykt-card-image/1"


class LifeCycle(StrEnum):
    """Card life cycle (GlobalPlatform card states, CHOICE: only the two the issuer needs)."""

    PERSONALISATION = "personalisation"
    """Blank or being personalised: only the transport key KMC opens a channel (GP 07)."""
    SECURED = "secured"
    """Personalisation ended: KMC and KLK erased, issuer-only commands refused (GP 0F)."""

    @property
    def gp_code(self) -> int:
        return 0x07 if self is LifeCycle.PERSONALISATION else 0x0F


@dataclass
class PinState:
    digest: bytes
    tries_left: int
    initial_digest: bytes | None = None
    must_change: bool = False


@dataclass
class CardState:
    profile_name: str
    chip_serial: bytes
    algorithm: Algorithm
    life_cycle: LifeCycle = LifeCycle.PERSONALISATION
    keys: dict[KeySlot, bytes] = field(default_factory=dict)
    klk: bytes | None = None
    """The key-loading key (AES-128, ``keyscheme`` "Key loading"): loaded by the manufacturer
    with the KMC, erased with it when personalisation ends."""
    pins: dict[str, PinState] = field(default_factory=dict)
    records: dict[str, list[bytes | None]] = field(default_factory=dict)
    """Record files by EF path; cyclic files keep the newest record first."""
    binaries: dict[str, bytes] = field(default_factory=dict)
    sm2_private: bytes | None = None
    """The chip's SM2 private key (SM4 cards, ``cardspec.sm2``): generated on the chip at
    personalisation, never read out."""
    data_objects: dict[int, bytes] = field(default_factory=dict)
    """PUT DATA objects (DF20 card certificate, DF21 issuer certificate)."""
    atc: int = 0
    """Application transaction counter of the EMV application (GET PROCESSING OPTIONS)."""
    last_online_atc: int = 0
    """ATC of the last transaction completed online (a TC after an ARQC): GET DATA 9F13."""
    blocked_apps: list[str] = field(default_factory=list)
    """DF paths of applications blocked by an issuer script (APPLICATION BLOCK)."""
    key_tries: dict[KeySlot, int] = field(default_factory=dict)
    """Error counters of the keys that have failed since their last success (a key not
    listed has its full count, ``KeySpec.tries``); 0 = blocked."""

    def pin_digest(self, block: bytes) -> bytes:
        return hashlib.sha256(self.chip_serial + block).digest()

    def to_json(self) -> dict[str, Any]:
        return {
            "format": IMAGE_FORMAT,
            "profile": self.profile_name,
            "chip_serial": self.chip_serial.hex(),
            "algorithm": self.algorithm.value,
            "life_cycle": self.life_cycle.value,
            "keys": {slot.value: key.hex() for slot, key in self.keys.items()},
            "klk": self.klk.hex() if self.klk is not None else None,
            "pins": {
                name: {
                    "digest": p.digest.hex(),
                    "tries_left": p.tries_left,
                    "initial_digest": p.initial_digest.hex() if p.initial_digest else None,
                    "must_change": p.must_change,
                }
                for name, p in self.pins.items()
            },
            "records": {
                path: [r.hex() if r is not None else None for r in recs]
                for path, recs in self.records.items()
            },
            "binaries": {path: b.hex() for path, b in self.binaries.items()},
            "sm2_private": self.sm2_private.hex() if self.sm2_private is not None else None,
            "data_objects": {f"{tag:04X}": v.hex() for tag, v in self.data_objects.items()},
            "key_tries": {slot.value: n for slot, n in self.key_tries.items()},
            "atc": self.atc,
            "last_online_atc": self.last_online_atc,
            "blocked_apps": list(self.blocked_apps),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CardState:
        if data.get("format") != IMAGE_FORMAT:
            raise ImageError(f"not a card image of format {IMAGE_FORMAT}")
        try:
            return cls(
                profile_name=data["profile"],
                chip_serial=bytes.fromhex(data["chip_serial"]),
                algorithm=Algorithm(data["algorithm"]),
                life_cycle=LifeCycle(data["life_cycle"]),
                keys={KeySlot(k): bytes.fromhex(v) for k, v in data["keys"].items()},
                klk=bytes.fromhex(data["klk"]) if data.get("klk") else None,
                pins={
                    name: PinState(
                        digest=bytes.fromhex(p["digest"]),
                        tries_left=int(p["tries_left"]),
                        initial_digest=bytes.fromhex(p["initial_digest"])
                        if p["initial_digest"]
                        else None,
                        must_change=bool(p["must_change"]),
                    )
                    for name, p in data["pins"].items()
                },
                records={
                    path: [bytes.fromhex(r) if r is not None else None for r in recs]
                    for path, recs in data["records"].items()
                },
                binaries={path: bytes.fromhex(b) for path, b in data["binaries"].items()},
                sm2_private=bytes.fromhex(data["sm2_private"]) if data.get("sm2_private") else None,
                data_objects={
                    int(tag, 16): bytes.fromhex(v)
                    for tag, v in (data.get("data_objects") or {}).items()
                },
                key_tries={KeySlot(k): int(n) for k, n in data.get("key_tries", {}).items()},
                atc=int(data.get("atc", 0)),
                last_online_atc=int(data.get("last_online_atc", 0)),
                blocked_apps=[str(p) for p in data.get("blocked_apps", [])],
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise ImageError(f"malformed card image: {exc}") from exc


def write_image(path: Path, state: CardState) -> None:
    text = json.dumps(state.to_json(), separators=(",", ":"))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_image(path: Path) -> CardState:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ImageError(f"cannot read card image {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ImageError(f"{path}: not a card image")
    return CardState.from_json(data)
