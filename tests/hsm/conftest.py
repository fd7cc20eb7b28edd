"""SoftHSM fixture: one token per xdist worker process (session scope), see hsm_helpers."""

from __future__ import annotations

import pytest
from hsm_helpers import (
    ALGS,
    REGION,
    TEST_BANK,
    TRANSPORT_KEY,
    HsmEnv,
    components_of,
    klk_master_key,
    master_key,
)

from cardspec import keyscheme
from cardspec.keyscheme import Algorithm, KeySlot
from hsm import ceremony, softhsm
from hsm.pkcs11 import open_token
from hsm.service import Pkcs11KeyService
from yikatong.settings import load_settings
from yikatong.wiring import hsm_config


@pytest.fixture(scope="session")
def hsm_env(tmp_path_factory: pytest.TempPathFactory) -> HsmEnv:
    root = tmp_path_factory.mktemp("softhsm")
    settings = load_settings(environ={"YKT_DATA_DIR": str(root)})
    config = hsm_config(settings)
    assert softhsm.ensure_token(config) is True
    token = open_token(config)
    masters: dict[tuple[KeySlot, Algorithm, int], bytes] = {}
    for alg in ALGS:
        for slot in KeySlot:
            key = master_key(slot, alg, 1)
            comps = components_of(key, 3 if slot is KeySlot.KMC else 2)
            kcvs = [keyscheme.kcv(c, alg) for c in comps]
            if slot.financial:  # the bank's issuer master keys: its own key domain
                info = ceremony.import_bank_master(
                    token, TEST_BANK, slot, comps, kcvs, alg, 1,
                    expected_kcv=keyscheme.kcv(key, alg),
                )  # fmt: skip
            else:
                info = ceremony.import_master(
                    token, slot, comps, kcvs, alg, 1, expected_kcv=keyscheme.kcv(key, alg)
                )
            assert info.kcv == keyscheme.kcv(key, alg)
            masters[(slot, alg, 1)] = key
    klk = klk_master_key(1)
    comps = components_of(klk, 2)
    info = ceremony.import_klk_master(
        token, comps, [keyscheme.kcv(c, Algorithm.AES) for c in comps], 1,
        expected_kcv=keyscheme.kcv(klk, Algorithm.AES),
    )  # fmt: skip
    assert info.kind == "klk" and info.kcv == keyscheme.kcv(klk, Algorithm.AES)
    comps = components_of(TRANSPORT_KEY)
    ceremony.import_transport_key(
        token, "bureau1", comps, [keyscheme.kcv(c, Algorithm.AES) for c in comps]
    )
    assert ceremony.generate_signing_key(token) is True
    return HsmEnv(root, config, token, Pkcs11KeyService(token, REGION), masters, {1: klk})
