"""SM4 card-key derivation through the SM test PKCS#11 module against its raw rate, beside 3DES on
SoftHSM2, in the same run.

(a) raw: ``C_DeriveKey(vendor SM4 ECB-encrypt-data)`` + ``C_DestroyObject`` per second through
    :mod:`hsm.p11fast` with the product's card-key template, in a tight loop (the module's own
    limit: the adapter cannot beat it);
(b) per card through ``Pkcs11KeyService.card_crypto``: every key a card needs (11 slots, 3 by
    the EMV factor), derived then destroyed;
(c) per-card verification: ``verify_internal_auth`` (IRK derived, session key derived, one
    ECB, all destroyed), the hospital check of a card.

ratio = (cards/s x keys per card) / raw derives/s. The same three figures for 3DES on SoftHSM2
(same machine, same run) put SM4 beside the second-generation path. The SM test module is not
an HSM (OpenSSL in this process): its raw rate says what the adapter costs, not what a vendor
HSM does. Every measurement runs in a forked child (module loaded after the fork). Run alone:
``.venv/bin/python -m bench.sm_derive``.
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
from hsm import ceremony, p11fast, smtoken, softhsm
from hsm import pkcs11 as p11
from hsm.cardcrypto import CARD_KEY
from hsm.config import HsmConfig
from hsm.service import CardKeyRef, Pkcs11KeyService
from yikatong.settings import load_settings
from yikatong.wiring import hsm_config

DURATION = 2.0
SLOTS = list(KeySlot)
PAN, PSN = "6217000012345678901", "01"
MODULE = Path(__file__).resolve().parents[1] / "var" / "lib" / smtoken.LIBRARY_NAME


def _pin() -> str:
    return "1234"  # a throwaway token of this run


def _sm_config(root: Path) -> HsmConfig:
    return HsmConfig(
        module=MODULE, token_label="ykt-sm-bench", pin_source=_pin,
        so_pin="12345678", vendor="ibm", sm_conf=root / "smp11.conf", sm_store=root / "tokens",
    )  # fmt: skip


def _raw(config: HsmConfig, alg: Algorithm, seconds: float) -> float:
    token = p11.open_token(config)
    fast = p11fast.fast_ops(str(config.module))
    tmpl = p11fast.key_template(alg, *CARD_KEY.usage, extractable=CARD_KEY.extractable)
    with token.use() as session:
        master = p11.find_one(session, ceremony.master_label(KeySlot.IRK, alg, 1))
        sh, base = session.handle, master.handle
        n, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            data = keyscheme.diversification_data(n.to_bytes(8, "big"), alg)
            fast.destroy(sh, fast.derive(sh, base, alg, data, tmpl))
            n += 1
    return n / elapsed


def _cards(config: HsmConfig, alg: Algorithm, seconds: float) -> float:
    service = Pkcs11KeyService(p11.open_token(config))
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        ref = CardKeyRef("330182D156000005" + n.to_bytes(8, "big").hex().upper(),
                         algorithm=alg, pan=PAN, psn=PSN)  # fmt: skip
        with service.card_crypto(ref) as crypto:
            crypto.derive_all(SLOTS)
        n += 1
    return n / elapsed


def _verify(config: HsmConfig, alg: Algorithm, seconds: float) -> float:
    """INTERNAL AUTHENTICATE checks per second (answers computed by the software scheme)."""
    service = Pkcs11KeyService(p11.open_token(config))
    with service.card_crypto(CardKeyRef("330182D156000005" + "00" * 8, algorithm=alg)) as c:
        factor, random = os.urandom(8), os.urandom(8)
        answer = c.internal_auth_response(factor, random)
    ref = CardKeyRef("330182D156000005" + "00" * 8, algorithm=alg)
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        service.verify_internal_auth(ref, factor, random, answer)
        n += 1
    return n / elapsed


def _run(target: Any, *args: Any) -> Any:
    with multiprocessing.get_context("fork").Pool(1) as pool:
        return pool.apply(target, args)


def _measure(config: HsmConfig, alg: Algorithm) -> dict[str, float]:
    _run(ceremony.init_keys, p11.open_token(config), alg)
    raw = _run(_raw, config, alg, DURATION)
    cards = _run(_cards, config, alg, DURATION)
    verify = _run(_verify, config, alg, DURATION)
    return {
        "raw_derive_destroy_per_s": round(raw),
        "cards_per_s": round(cards, 1),
        "keys_per_card": len(SLOTS),
        "ratio": round(cards * len(SLOTS) / raw, 3),
        "verifications_per_s": round(verify, 1),
    }


def main() -> dict[str, Any]:
    smtoken.build(MODULE.parent)
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ykt-bench-sm-") as tmp:
        sm = _sm_config(Path(tmp) / "sm")
        smtoken.ensure_token(sm)
        figures["sm4_sm_test_module"] = _measure(sm, Algorithm.SM4)
        des = hsm_config(load_settings(environ={"YKT_DATA_DIR": tmp}))
        softhsm.ensure_token(des)
        figures["des3_softhsm2"] = _measure(des, Algorithm.DES3)
    for name, f in figures.items():
        print(
            f"{name:20s} raw derive+destroy {f['raw_derive_destroy_per_s']:7d}/s  "
            f"cards {f['cards_per_s']:7.1f}/s x {f['keys_per_card']} keys  "
            f"ratio {f['ratio']:.3f}  "
            f"INTERNAL AUTHENTICATE checks {f['verifications_per_s']:7.1f}/s"
        )
    return {f"{name}.{k}": v for name, f in figures.items() for k, v in f.items()}


if __name__ == "__main__":
    os.environ.pop("SOFTHSM2_CONF", None)
    main()
