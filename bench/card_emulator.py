"""In-process personalisation on the reference card emulator (no HSM, no PC/SC).

Figures: personalisations per second with :class:`SoftwareCardCrypto` (keys derived in
software per call, like an HSM round trip would be per call), APDUs per personalisation, the
emulator's own APDU rate (card side only), and the cost of image persistence (save after every
state-changing command). Run alone: ``python -m bench.card_emulator``.
"""

from __future__ import annotations

import os
import tempfile
import time
from datetime import date
from hashlib import sha256
from pathlib import Path
from typing import Any

from cardspec import ids, keyscheme, perso
from cardspec.crypto import SoftwareCardCrypto
from cardspec.emulator import blank_card
from cardspec.keyscheme import Algorithm, KeySlot
from cardspec.profile import FinancialData, Holder, MedicalData, PensionData
from cardspec.reader import InProcessReader

PAN, PSN = "6217000012345678907", "01"


def _setup(i: int) -> tuple[SoftwareCardCrypto, perso.CardPersoData, bytes]:
    serial = i.to_bytes(8, "big")
    code = ids.make_card_identification_code("330182", serial)
    masters = {s: sha256(f"bench:{s.value}".encode()).digest()[:16] for s in KeySlot}
    crypto = SoftwareCardCrypto(masters, (keyscheme.card_factor(code),), Algorithm.DES3,
                                (keyscheme.emv_factor(PAN, PSN),),
                                klk_master=sha256(b"bench:klk").digest()[:16])  # fmt: skip
    data = perso.CardPersoData(
        card_identification_code=code, card_number=ids.make_card_number(f"{i:08d}"),
        spec_version="2.00", issue_date=date(2024, 3, 1), expiry_date=date(2034, 3, 1),
        init_org_code="330100000001",
        holder=Holder("11010519491231002X", "张三", "2", "01", "110105", date(1949, 12, 31)),
        initial_pin="123456",
        bank_pin="802413",
        medical=MedicalData("310", "330182", "1", "11", date(2020, 1, 1)),
        pension=PensionData("1", "330182", date(2020, 1, 1), "11100"),
        financial=FinancialData(PAN, date(2034, 3, 31), PSN, "ZHANG SAN"),
    )  # fmt: skip
    return crypto, data, serial


def _run(n: int, image_dir: Path | None) -> tuple[float, int, int]:
    apdus = 0
    start = time.perf_counter()
    for i in range(n):
        crypto, data, serial = _setup(i + 1)
        path = image_dir / f"{i}.json" if image_dir else None
        card = blank_card(
            serial, crypto.card_key(KeySlot.KMC), klk=crypto.key_loading_key(), path=path
        )
        result = perso.personalise(InProcessReader(card), crypto, data)
        apdus = result.apdu_count
    return time.perf_counter() - start, apdus, n


def _card_apdu_rate(n: int) -> float:
    crypto, data, serial = _setup(1)
    card = blank_card(serial, crypto.card_key(KeySlot.KMC), klk=crypto.key_loading_key())
    perso.personalise(InProcessReader(card), crypto, data)
    card.power_on()
    select = bytes.fromhex("00A4040C0F7378312E73682EC9E7BBE1B1A3D5CF")
    read = bytes.fromhex("00B2072C00")
    card.process(select)
    start = time.perf_counter()
    for _ in range(n):
        card.process(read)
    return n / (time.perf_counter() - start)


def main() -> dict[str, Any]:
    n = int(os.environ.get("BENCH_CARDS", "500"))
    elapsed, apdus, _ = _run(n, None)
    with tempfile.TemporaryDirectory() as tmp:
        elapsed_p, _, _ = _run(n // 5 or 1, Path(tmp))
    figures = {
        "cards": n,
        "apdus_per_card": apdus,
        "perso_per_s_in_memory": round(n / elapsed, 1),
        "perso_ms_in_memory": round(1000 * elapsed / n, 2),
        "perso_ms_with_image_saves": round(1000 * elapsed_p / (n // 5 or 1), 2),
        "card_read_record_per_s": round(_card_apdu_rate(20000)),
    }
    for key, value in figures.items():
        print(f"{key}: {value}")
    return figures


if __name__ == "__main__":
    main()
