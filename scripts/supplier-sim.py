"""A chip supplier's side, simulated for trying the delivered-stock workflow (README, "Blank
chips from a chip supplier"). Independent of Yikatong's own key code: only `cryptography`.

    python3 scripts/supplier-sim.py OUT_DIR N LOT

writes, under OUT_DIR:
* ``components.txt`` (once): two random components of the delivery transport master ``kmc``
  (3DES) and of the key-loading master ``klk`` (AES), each with its KCV — what the supplier's
  and the issuer's custodians type in at the key ceremony;
* ``LOT.csv``: the delivery file (chip serials with the KCVs of their keys) for
  ``ykt stock import``;
* ``LOT-keys.txt``: per chip, the serial and its diversified KMC and KLK (EMV option A: the
  serial and its complement, encrypted under the master) — what the plant writes into the
  chips; used here to make emulated blank chips with ``ykt card new-blank``.
"""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes


def _ecb(algorithm: TripleDES | algorithms.AES, data: bytes) -> bytes:
    enc = Cipher(algorithm, modes.ECB()).encryptor()
    return enc.update(data) + enc.finalize()


def des3(key: bytes, data: bytes) -> bytes:
    return _ecb(TripleDES(key + key[:8]), data)


def aes(key: bytes, data: bytes) -> bytes:
    return _ecb(algorithms.AES(key), data)


def kcv(alg: str, key: bytes) -> str:
    value = des3(key, bytes(8)) if alg == "3des" else aes(key, b"\x01" * 16)
    return value[:3].hex().upper()


def xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def main(out: Path, n: int, lot: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    comps = out / "components.txt"
    if not comps.exists():
        with comps.open("w") as fh:
            for key, alg in (("kmc", "3des"), ("klk", "aes")):
                for c in (1, 2):
                    part = os.urandom(16)
                    fh.write(f"{key} {alg} component {c}: {part.hex().upper()} "
                             f"KCV {kcv(alg, part)}\n")  # fmt: skip
    parts: dict[str, list[bytes]] = {}
    for line in comps.read_text().splitlines():
        key, _alg, _, _, value, _, _ = line.split()
        parts.setdefault(key, []).append(bytes.fromhex(value))
    kmc_master, klk_master = xor(*parts["kmc"]), xor(*parts["klk"])
    with (out / f"{lot}.csv").open("w", newline="") as fh, \
            (out / f"{lot}-keys.txt").open("w") as keys:  # fmt: skip
        writer = csv.writer(fh)
        writer.writerow(["serial", "lot", "kmc_kcv", "klk_kcv"])
        for _ in range(n):
            serial = os.urandom(8)
            factor = serial + bytes(b ^ 0xFF for b in serial)
            kmc, klk = des3(kmc_master, factor), aes(klk_master, factor)
            writer.writerow([serial.hex().upper(), lot, kcv("3des", kmc), kcv("aes", klk)])
            keys.write(f"{serial.hex().upper()} {kmc.hex().upper()} {klk.hex().upper()}\n")
    print(f"{n} chips of lot {lot}: delivery file {out / (lot + '.csv')}")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: supplier-sim.py OUT_DIR N LOT")
    main(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
