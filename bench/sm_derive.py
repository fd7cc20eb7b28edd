"""SM4 card-key derivation through the SM test PKCS#11 module against its raw rate, beside 3DES on
SoftHSM2, in the same run.

(a) raw: ``C_DeriveKey(vendor SM4 ECB-encrypt-data)`` + ``C_DestroyObject`` per second through
    :mod:`hsm.p11fast` with the product's card-key template, in a tight loop (the module's own
    limit: the adapter cannot beat it);
(b) per card through ``Pkcs11KeyService.card_crypto``: every key a card needs (11 slots, 3 by
    the EMV factor), derived then destroyed;
(c) per-card verification: ``verify_internal_auth`` (IRK derived, session key derived, one
    ECB, all destroyed), the hospital check of a card;
(d) per-card data preparation, the HSM's part of it for one card of the generation's profile
    (SM4: third generation; 3DES: second), in one ``card_crypto`` session: the initial PIN
    (MAC under the PUK), every WRITE KEY payload (each card key wrapped under the card's KLK:
    RFC 5649 under an AES KLK for 3DES, ``SM4-ECB || KCV`` under an SM4 KLK for SM4), the PIN
    payload encrypted under KMC, and for SM4 the issuer's SM2 signature of the card
    certificate (the chip's key pair is made by the chip; a fixed public key stands in here).

(c) and (d) run :data:`REPEATS` times each (the machine is shared): the median is the figure,
``*_min`` / ``*_max`` the spread.

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

from cardspec import keyscheme, sm2
from cardspec.keyscheme import Algorithm, KeySlot
from cardspec.profile import social_security_profile
from hsm import ceremony, p11fast, smtoken, softhsm
from hsm import pkcs11 as p11
from hsm.cardcrypto import CARD_KEY
from hsm.config import HsmConfig
from hsm.service import CardKeyRef, Pkcs11KeyService
from issuance.batches.dataprep import natural_pin
from yikatong.settings import load_settings
from yikatong.wiring import hsm_config

DURATION = 2.0
#: Runs of the per-card preparation and verification figures (median and spread).
REPEATS = 3
SLOTS = list(KeySlot)
PAN, PSN = "6212260012345678903", "01"
BANK = "bench-bank"
"""The bank key domain of the EMV keys (its IMKs imported by :func:`_bank_keys`)."""
MODULE = Path(__file__).resolve().parents[1] / "var" / "lib" / smtoken.LIBRARY_NAME


def _pin() -> str:
    return "1234"  # a throwaway token of this run


def _sm_config(root: Path) -> HsmConfig:
    return HsmConfig(
        module=MODULE, token_label="ykt-sm-bench", pin_source=_pin,
        so_pin="12345678", vendor="ibm", sm_conf=root / "smp11.conf", sm_store=root / "tokens",
    )  # fmt: skip


def _bank_keys(config: HsmConfig, alg: Algorithm) -> None:
    """The bank's issuer master keys of ``alg`` (random components: the bank's custodians)."""
    from devstack.bank import IMK_SLOTS, imk_components

    token = p11.open_token(config)
    for slot in IMK_SLOTS:
        _, comps, kcvs = imk_components(alg)
        ceremony.import_bank_master(token, BANK, slot, comps, kcvs, alg)


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
                         algorithm=alg, pan=PAN, psn=PSN, bank=BANK)  # fmt: skip
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


def _prepare(config: HsmConfig, alg: Algorithm, seconds: float) -> float:
    """Cards per second of (d) in the module docstring."""
    service = Pkcs11KeyService(p11.open_token(config), signing="sm2" if alg is Algorithm.SM4
                               else "ecdsa-p256")  # fmt: skip
    profile = social_security_profile(generation=3 if alg is Algorithm.SM4 else 2, algorithm=alg)
    slots = [spec.slot for _, spec in profile.key_specs() if spec.slot is not KeySlot.KMC]
    pins = list(profile.pin_specs())
    chip_public = sm2.public_key(12345)  # the chip's own key pair is generated by the chip
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        cic = "330182D156000005" + n.to_bytes(8, "big").hex().upper()
        ref = CardKeyRef(cic, algorithm=alg, pan=PAN, psn=PSN, bank=BANK)
        with service.card_crypto(ref) as crypto:
            pin = natural_pin(cic, lambda d, c=crypto: c.mac_block(KeySlot.PUK, d, bytes(8)))
            payloads = [crypto.wrapped_card_key(slot) for slot in slots]
            payloads += [crypto.encrypt(KeySlot.KMC, spec.encode(pin)) for _, spec in pins]
        if alg is Algorithm.SM4:
            payloads.append(sm2.card_certificate(service, cic, chip_public))
        n += 1
    return n / elapsed


def _certify(config: HsmConfig, seconds: float) -> float:
    """SM4 only: card certificates signed per second by the issuer's SM2 key in the module
    (the part of (d) that 3DES cards do not have)."""
    service = Pkcs11KeyService(p11.open_token(config), signing="sm2")
    chip_public = sm2.public_key(12345)
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        sm2.card_certificate(service, "330182D156000005" + n.to_bytes(8, "big").hex(), chip_public)
        n += 1
    return n / elapsed


def _spread(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    return ordered[len(ordered) // 2], ordered[0], ordered[-1]


def _run(target: Any, *args: Any) -> Any:
    with multiprocessing.get_context("fork").Pool(1) as pool:
        return pool.apply(target, args)


def _measure(config: HsmConfig, alg: Algorithm) -> dict[str, float]:
    _run(ceremony.init_keys, p11.open_token(config), alg)
    _run(_bank_keys, config, alg)
    raw = _run(_raw, config, alg, DURATION)
    cards = _run(_cards, config, alg, DURATION)
    prep = _spread([_run(_prepare, config, alg, DURATION) for _ in range(REPEATS)])
    verify = _spread([_run(_verify, config, alg, DURATION) for _ in range(REPEATS)])
    extra = {}
    if alg is Algorithm.SM4:
        extra["sm2_card_certificates_per_s"] = round(_run(_certify, config, DURATION), 1)
    return {
        "raw_derive_destroy_per_s": round(raw),
        "cards_per_s": round(cards, 1),
        "keys_per_card": len(SLOTS),
        "ratio": round(cards * len(SLOTS) / raw, 3),
        "prepared_cards_per_s": round(prep[0], 1),
        "prepared_cards_per_s_min": round(prep[1], 1),
        "prepared_cards_per_s_max": round(prep[2], 1),
        "verifications_per_s": round(verify[0], 1),
        "verifications_per_s_min": round(verify[1], 1),
        "verifications_per_s_max": round(verify[2], 1),
        **extra,
    }


def main() -> dict[str, Any]:
    smtoken.build(MODULE.parent)
    load = os.getloadavg()[0]  # the machine is shared: how loaded it was
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
            f"ratio {f['ratio']:.3f}\n{'':20s} per-card data preparation "
            f"{f['prepared_cards_per_s']:7.1f} cards/s ({f['prepared_cards_per_s_min']:.1f}-"
            f"{f['prepared_cards_per_s_max']:.1f})  INTERNAL AUTHENTICATE checks "
            f"{f['verifications_per_s']:7.1f}/s ({f['verifications_per_s_min']:.1f}-"
            f"{f['verifications_per_s_max']:.1f}), median of {REPEATS} runs (min-max)"
        )
        if "sm2_card_certificates_per_s" in f:
            print(f"{'':20s} of which SM2 card certificates alone "
                  f"{f['sm2_card_certificates_per_s']:7.1f}/s")  # fmt: skip
    flat: dict[str, Any] = {f"{name}.{k}": v for name, f in figures.items() for k, v in f.items()}
    flat["load_average_1min_at_start"] = round(load, 1)
    flat["command"] = "python -m bench --update sm_derive (alone: python -m bench.sm_derive)"
    return flat


if __name__ == "__main__":
    os.environ.pop("SOFTHSM2_CONF", None)
    main()
