"""Per-card key derivation in SoftHSM2 against the raw HSM derive rate of the same run.

(a) raw: ``C_DeriveKey(CKM_DES3_ECB_ENCRYPT_DATA)`` + ``C_DestroyObject`` per second, called
    exactly as the product calls them: the direct entry points of :mod:`hsm.p11fast`, the
    product's card-key template (:data:`hsm.cardcrypto.CARD_KEY`: public session object,
    sensitive, CKA_ENCRYPT + CKA_DERIVE) and a master key handle, in a tight loop - the limit
    the adapter cannot beat;
(b) per card, through ``Pkcs11KeyService.card_crypto``: derive every key a card needs (8 social
    security slots + 3 financial = 11, of which 3 by the EMV factor) and destroy them, in 1
    process and in 2 processes;

ratio = (cards/s x keys per card) / raw derives/s: the share of the HSM's own derive rate the
product reaches (at most 1; target >= 0.7: the adapter's overhead - lock, fork check, master
handle cache, diversification data, the card-crypto object - must stay small). The 2-process
figure is divided by the 1-process raw rate (2 cores: up to ~2).

Every measurement runs in a forked child, so the module is loaded after the fork, as in the
product. Figures are noisy when other work shares the machine. Run alone:
``.venv/bin/python -m bench.hsm_derive``.
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from cardspec import keyscheme
from cardspec.keyscheme import Algorithm, KeySlot
from hsm import ceremony, p11fast, softhsm
from hsm import pkcs11 as p11
from hsm.cardcrypto import CARD_KEY
from hsm.config import HsmConfig
from hsm.service import CardKeyRef, Pkcs11KeyService
from yikatong.settings import load_settings
from yikatong.wiring import hsm_config

DURATION = 2.0
SLOTS = list(KeySlot)  # 8 social security + 3 financial
PAN, PSN = "6212260012345678903", "01"
BANK = "bench-bank"
"""The bank key domain of the EMV keys (its IMKs imported by :func:`_bank_keys`)."""


def _config(root: Path) -> HsmConfig:
    return hsm_config(load_settings(environ={"YKT_DATA_DIR": str(root)}))


def _bank_keys(config: HsmConfig) -> None:
    """The bank's issuer master keys (random components: the bank's custodians)."""
    from devstack.bank import IMK_SLOTS, imk_components

    token = p11.open_token(config)
    for slot in IMK_SLOTS:
        _, comps, kcvs = imk_components()
        ceremony.import_bank_master(token, BANK, slot, comps, kcvs)


def _raw(config: HsmConfig, seconds: float) -> float:
    """C_DeriveKey + C_DestroyObject through hsm.p11fast with the product's template."""
    token = p11.open_token(config)
    fast = p11fast.fast_ops(str(config.module))
    tmpl = p11fast.key_template(Algorithm.DES3, *CARD_KEY.usage, extractable=CARD_KEY.extractable)
    with token.use() as session:
        master = p11.find_one(session, ceremony.master_label(KeySlot.IRK, Algorithm.DES3, 1))
        sh, base = session.handle, master.handle
        n, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            data = keyscheme.diversification_data(n.to_bytes(8, "big"), Algorithm.DES3)
            fast.destroy(sh, fast.derive(sh, base, Algorithm.DES3, data, tmpl))
            n += 1
    return n / elapsed


def _cards(config: HsmConfig, seconds: float, offset: int) -> int:
    service = Pkcs11KeyService(p11.open_token(config))
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        serial = (offset + n).to_bytes(8, "big").hex().upper()
        ref = CardKeyRef("330182D156000005" + serial, pan=PAN, psn=PSN, bank=BANK)
        with service.card_crypto(ref) as crypto:
            crypto.derive_all(SLOTS)
        n += 1
    return n


def _run(target: Any, *args: Any) -> Any:
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        return pool.apply(target, args)


def _parallel(config: HsmConfig, procs: int, seconds: float) -> float:
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(procs) as pool:
        start = time.perf_counter()
        counts = pool.starmap(_cards, [(config, seconds, i * 10**9) for i in range(procs)])
        elapsed = time.perf_counter() - start
    return sum(counts) / max(elapsed, seconds)


def main() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ykt-bench-hsm-") as tmp:
        config = _config(Path(tmp))
        softhsm.ensure_token(config)
        _run(ceremony.init_keys, p11.open_token(config), Algorithm.DES3)
        _run(_bank_keys, config)
        raw = _run(_raw, config, DURATION)
        one = _run(_cards, config, DURATION, 0) / DURATION
        two = _parallel(config, 2, DURATION)
    keys = len(SLOTS)
    ratio = one * keys / raw
    figures = {
        "raw_derive_destroy_per_s": round(raw),
        "cards_per_s_1proc": round(one, 1),
        "cards_per_s_2proc": round(two, 1),
        "keys_per_card": keys,
        "limit": round(raw),
        "ratio": round(ratio, 3),
        "ratio_2proc_vs_1proc_raw": round(two * keys / raw, 3),
    }
    print(
        f"raw HSM derive+destroy        : {raw:9.0f} /s  "
        "(1 process, DES3, p11fast, product template)"
    )
    print(
        f"per-card derivation, 1 process: {one:9.1f} cards/s x {keys} keys "
        f"= {one * keys:.0f} keys/s"
    )
    print(
        f"per-card derivation, 2 procs  : {two:9.1f} cards/s x {keys} keys "
        f"= {two * keys:.0f} keys/s"
    )
    print(f"ratio (1 proc) product keys/s / raw derives/s: {ratio:.3f} (<= 1; target >= 0.7)")
    print(f"ratio (2 procs) vs 1-process raw             : {two * keys / raw:.3f}")
    return figures


if __name__ == "__main__":
    os.environ.pop("SOFTHSM2_CONF", None)
    main()
