"""The bank's issuer master keys in their own key domain: imported by key ceremony, the per-card
EMV keys derived from them in the HSM (checked against pyemv's EMV option A), and every
cross-domain use refused."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pyemv.kd
import pytest
from hsm_helpers import REGION, TEST_BANK, HsmEnv, components_of, master_key
from hypothesis import given, settings
from hypothesis import strategies as st

from cardspec import emv, keyscheme
from cardspec.keyscheme import Algorithm, KeySlot
from hsm import ceremony
from hsm import pkcs11 as p11
from hsm.errors import KcvMismatch, KeyDomainError, KeyNotFound
from hsm.service import CardKeyRef, SoftwareKeyService

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cardspec"))
from emv_oracle import oracle_icc_mk, oracle_pin, oracle_script_mac

pytestmark = pytest.mark.softhsm
CIC = "330182D156000005" + "0011223344556677"
PAN, PSN = "6212260000000000018", "01"
FIN = (KeySlot.FIN_AC, KeySlot.FIN_SMI, KeySlot.FIN_SMC)


def test_bank_ceremony_labels_and_listing(hsm_env: HsmEnv) -> None:
    """``ykt hsm import fin_ac --bank other-bank``: components checked by their KCVs into the
    bank's label namespace; a wrong component KCV leaves nothing behind."""
    key = os.urandom(16)
    comps = components_of(key, 3)
    kcvs = [keyscheme.kcv(c, Algorithm.DES3) for c in comps]
    bad = [*kcvs[:2], bytes(3)]
    with pytest.raises(KcvMismatch):
        ceremony.import_bank_master(hsm_env.token, "other-bank", KeySlot.FIN_AC, comps, bad)
    label = "ykt:bank:other-bank:imk-ac:3des:v1"
    with hsm_env.token.use() as session:
        assert not p11.exists(session, label)
    info = ceremony.import_bank_master(
        hsm_env.token, "other-bank", KeySlot.FIN_AC, comps, kcvs,
        expected_kcv=keyscheme.kcv(key, Algorithm.DES3),
    )  # fmt: skip
    assert info.label == label and info.kind == "bank" and info.slot is KeySlot.FIN_AC
    assert info.kcv == keyscheme.kcv(key, Algorithm.DES3) and not info.extractable
    # one of three IMKs: no complete bank key set yet; the test bank's is complete
    assert ceremony.bank_versions(hsm_env.token, "other-bank", Algorithm.DES3) == []
    assert ceremony.bank_versions(hsm_env.token, TEST_BANK, Algorithm.DES3) == [1]
    listed = {k.label: k for k in ceremony.list_keys(hsm_env.token)}
    assert listed[label].kind == "bank" and listed[label].kcv == info.kcv
    # a bank is never part of a card-centre key set
    assert not any(":bank:" in x or ":fin_" in x
                   for x in ceremony.key_set_labels(Algorithm.DES3, 1))  # fmt: skip


@pytest.mark.parametrize("alg", [Algorithm.DES3, Algorithm.AES])
def test_emv_keys_derived_in_the_hsm_from_the_bank_imks(hsm_env: HsmEnv, alg: Algorithm) -> None:
    """MK-AC, MK-SMI, MK-SMC of a card: EMV option A (AES: option C) of the bank's IMKs by
    PAN and PSN, in
    the HSM (KCVs of the session objects, and the WRITE KEY payload unwrapped by the twin)."""
    ref = CardKeyRef(CIC, 1, alg, pan=PAN, psn=PSN, bank=TEST_BANK)
    with hsm_env.service.card_crypto(ref) as crypto:
        kcvs = {slot: crypto.kcv(slot) for slot in FIN}
    for slot in FIN:
        imk = master_key(slot, alg, 1)
        if alg is Algorithm.DES3:
            expected = pyemv.kd.derive_icc_mk_a(imk, PAN, PSN)  # the independent oracle
        else:  # option C (EMV Book 2 A1.4.3), the oracle of tests/cardspec/emv_oracle.py
            expected = oracle_icc_mk(alg, imk, PAN, PSN)
        assert kcvs[slot] == keyscheme.kcv(expected, alg), slot


def test_cross_domain_uses_are_refused(hsm_env: HsmEnv) -> None:
    service = hsm_env.service
    # no card-centre master for an EMV key, no bank master for a card-centre key
    with pytest.raises(KeyDomainError):
        ceremony.master_label(KeySlot.FIN_AC, Algorithm.DES3, 1)
    with pytest.raises(KeyDomainError):
        ceremony.bank_label(TEST_BANK, KeySlot.IRK, Algorithm.DES3, 1)
    with pytest.raises(KeyDomainError):
        ceremony.generate_master(hsm_env.token, KeySlot.FIN_SMI, Algorithm.DES3, 3)
    comps = components_of(os.urandom(16))
    kcvs = [keyscheme.kcv(c, Algorithm.DES3) for c in comps]
    with pytest.raises(KeyDomainError):
        ceremony.import_master(hsm_env.token, KeySlot.FIN_AC, comps, kcvs, Algorithm.DES3, 4)
    with pytest.raises(KeyDomainError):
        ceremony.import_bank_master(hsm_env.token, TEST_BANK, KeySlot.PUK, comps, kcvs)
    with pytest.raises(KeyDomainError):  # the service's master look-up, either way
        service.master_synced(KeySlot.FIN_AC, Algorithm.DES3, 1)
    # a card without a bank has no EMV keys; with another bank's domain, not these
    bare = CardKeyRef(CIC, 1, Algorithm.DES3, pan=PAN, psn=PSN)
    with service.card_crypto(bare) as crypto, pytest.raises(KeyDomainError):
        crypto.kcv(KeySlot.FIN_AC)
    other = CardKeyRef(CIC, 1, Algorithm.DES3, pan=PAN, psn=PSN, bank="no-such-bank")
    with service.card_crypto(other) as crypto, pytest.raises(KeyNotFound):
        crypto.kcv(KeySlot.FIN_AC)
    # the card's EMV keys serve no card-centre command (EXTERNAL AUTHENTICATE, secure
    # messaging MAC, sensitive data); its card-centre keys still do
    ref = CardKeyRef(CIC, 1, Algorithm.DES3, pan=PAN, psn=PSN, bank=TEST_BANK)
    twin = SoftwareKeyService.random(banks=(TEST_BANK,))
    for crypto in (service.card_crypto(ref), twin.card_crypto(ref)):
        with crypto:
            for slot in FIN:
                with pytest.raises(KeyDomainError):
                    crypto.external_auth(slot, os.urandom(8))
                with pytest.raises(KeyDomainError):
                    crypto.mac_block(slot, b"\x84\x24\x00\x00", bytes(8))
                with pytest.raises(KeyDomainError):
                    crypto.encrypt(slot, b"123456")
            assert len(crypto.external_auth(KeySlot.EAK, os.urandom(8))) == 8
    # the software twin keeps the domains apart too
    with pytest.raises(KeyDomainError):
        SoftwareKeyService({(KeySlot.FIN_AC, Algorithm.DES3, 1): os.urandom(16)}, REGION)
    with pytest.raises(KeyDomainError):
        SoftwareKeyService({}, REGION, bank_masters={(TEST_BANK, KeySlot.IRK, Algorithm.DES3, 1):
                                                     os.urandom(16)})  # fmt: skip


def test_issuer_script_mac_and_pin_encipherment_in_the_hsm_match_pyemv(hsm_env: HsmEnv) -> None:
    """The activation's issuer script computed in the HSM (session keys derived there from the
    card's MK-SMI / MK-SMC of the bank's IMKs) equals the independent oracle pyemv: the common
    session key derivation, the format 2 PIN block enciphered (EMV), the command MAC."""
    from pyemv import sm

    ref = CardKeyRef(CIC, 1, Algorithm.DES3, pan=PAN, psn=PSN, bank=TEST_BANK)
    twin = SoftwareKeyService({}, REGION, bank_masters={
        (TEST_BANK, slot, Algorithm.DES3, 1): master_key(slot, Algorithm.DES3, 1) for slot in FIN
    })  # fmt: skip
    mk_smi = pyemv.kd.derive_icc_mk_a(master_key(KeySlot.FIN_SMI, Algorithm.DES3, 1), PAN, PSN)
    mk_smc = pyemv.kd.derive_icc_mk_a(master_key(KeySlot.FIN_SMC, Algorithm.DES3, 1), PAN, PSN)
    for n in range(3):
        atc, ac = 7 + n, os.urandom(8)
        block = sm.format_iso9564_2_pin_block(f"{480159 + n:06d}")
        sk_smc = pyemv.kd.derive_common_sk(mk_smc, ac)
        enc = sm.encrypt_command_data(sk_smc, block, sm.EncryptionType.EMV)
        header = bytes([0x84, 0x24, 0x00, 0x02, len(enc) + 4])
        mac = sm.generate_command_mac(pyemv.kd.derive_common_sk(mk_smi, ac),
                                      header + atc.to_bytes(2, "big") + ac + enc, 4)  # fmt: skip
        with hsm_env.service.card_crypto(ref) as hsm, twin.card_crypto(ref) as soft:
            assert hsm.encipher_pin_block(ac, block) == soft.encipher_pin_block(ac, block) == enc
            assert hsm.issuer_script_mac(header[:4], atc, ac, enc) == mac
            assert soft.issuer_script_mac(header[:4], atc, ac, enc) == mac
            # APPLICATION UNBLOCK (84 18, no data): a one-block message
            unblock = sm.generate_command_mac(pyemv.kd.derive_common_sk(mk_smi, ac),
                                              b"\x84\x18\x00\x00\x04" + atc.to_bytes(2, "big")
                                              + ac, 4)  # fmt: skip
            assert hsm.issuer_script_mac(b"\x84\x18\x00\x00", atc, ac, b"") == unblock


def test_aes_issuer_script_mac_and_pin_encipherment_in_the_hsm_match_the_oracle(
    hsm_env: HsmEnv,
) -> None:
    """An AES card's issuer script in the HSM (SoftHSM: the session keys derived by
    CKM_AES_ECB_ENCRYPT_DATA from the card's option C MK-SMI / MK-SMC, AES-CMAC from encryptions
    under the session-key object) equals the independent oracle (pycryptodome's AES and CMAC)
    and the software twin, for messages of every length around the block boundaries."""
    alg = Algorithm.AES
    ref = CardKeyRef(CIC, 1, alg, pan=PAN, psn=PSN, bank=TEST_BANK)
    twin = SoftwareKeyService({}, REGION, bank_masters={
        (TEST_BANK, slot, alg, 1): master_key(slot, alg, 1) for slot in FIN
    })  # fmt: skip
    mk_smi = oracle_icc_mk(alg, master_key(KeySlot.FIN_SMI, alg, 1), PAN, PSN)
    mk_smc = oracle_icc_mk(alg, master_key(KeySlot.FIN_SMC, alg, 1), PAN, PSN)
    with hsm_env.service.card_crypto(ref) as hsm, twin.card_crypto(ref) as soft:
        for n in range(3):
            ac, pin = os.urandom(8), f"{480159 + n:06d}"
            block = bytes.fromhex(f"26{pin}FFFFFFFF")
            enc = oracle_pin(alg, mk_smc, ac, pin)
            assert hsm.encipher_pin_block(ac, block) == soft.encipher_pin_block(ac, block) == enc
        # 15 + len(data) bytes: 15 (one padded block), 16 and 32 (whole blocks: CMAC's K1), ...
        for size in (0, 1, 16, 17, 18, 33):
            atc, ac, data = 7 + size, os.urandom(8), os.urandom(size)
            header = bytes([0x84, 0x24, 0x00, 0x02])
            mac = oracle_script_mac(alg, mk_smi, header, atc.to_bytes(2, "big"), ac, data)
            assert hsm.issuer_script_mac(header, atc, ac, data) == mac, size
            assert soft.issuer_script_mac(header, atc, ac, data) == mac, size


@settings(max_examples=40, deadline=None)
@given(
    data=st.binary(max_size=70), atc=st.integers(0, 0xFFFF), ac=st.binary(min_size=8, max_size=8)
)
def test_aes_cmac_in_the_hsm_equals_the_reference(
    hsm_env: HsmEnv, data: bytes, atc: int, ac: bytes
) -> None:
    """The HSM's AES-CMAC (from encryptions under the session-key object) is a second
    implementation of ``cardspec.emv.mac``: equal to it for every message length."""
    alg = Algorithm.AES
    ref = CardKeyRef(CIC, 1, alg, pan=PAN, psn=PSN, bank=TEST_BANK)
    mk_smi = oracle_icc_mk(alg, master_key(KeySlot.FIN_SMI, alg, 1), PAN, PSN)
    header = bytes([0x84, 0x24, 0x00, 0x02])
    expected = emv.script_mac(emv.sm_session_key(mk_smi, ac, alg), header, atc, ac, data, alg)
    with hsm_env.service.card_crypto(ref) as hsm:
        assert hsm.issuer_script_mac(header, atc, ac, data) == expected
