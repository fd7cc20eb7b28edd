"""SM4 card keys and SM2 through the SM test module (hsm/smtoken), a PKCS#11 module over OpenSSL 3
offering exactly the vendor mechanisms of the ``ibm`` table (hsm.vendors).

The masters are known test keys imported as components: the software key scheme
(pyca/cryptography's SM4) is the oracle for every value the module computes. One vendor table
per process (python-pkcs11 loads a module once), so the other table runs in a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hsm_helpers import REGION, TEST_BANK, components_of, master_key
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pkcs11 import Attribute, ObjectClass
from pkcs11.exceptions import AttributeSensitive

from cardspec import keyscheme, perso, sm2
from cardspec.crypto import SoftwareCardCrypto
from cardspec.emulator import blank_card
from cardspec.keyscheme import Algorithm, KeySlot
from cardspec.profile import social_security_profile
from cardspec.reader import InProcessReader
from hsm import ceremony, p11fast, smtoken, vendors
from hsm import pkcs11 as p11
from hsm.cardcrypto import expected_response
from hsm.chain import CardData, KeyChain, chip_data
from hsm.config import HsmConfig
from hsm.errors import CryptogramMismatch, HsmError
from hsm.ports import KCV_BLOCK
from hsm.service import CardKeyRef, Pkcs11KeyService

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cardspec"))
from cardspec_helpers import SERIAL, card_code, perso_data
from emv_oracle import oracle_icc_mk, oracle_pin, oracle_script_mac

SM4 = Algorithm.SM4
MODULE = Path(__file__).resolve().parents[2] / "var" / "lib" / smtoken.LIBRARY_NAME
KLK_SM4 = bytes.fromhex("00112233445566778899AABBCCDDEEFF")


def _config(root: Path, vendor: str = "ibm", pin: str = "4321") -> HsmConfig:
    return HsmConfig(
        module=MODULE, token_label="ykt-sm", pin_source=lambda: pin, so_pin="87654321",
        vendor=vendor, sm_conf=root / "smp11.conf", sm_store=root / "tokens",
    )  # fmt: skip


@pytest.fixture(scope="module")
def sm_env(tmp_path_factory: pytest.TempPathFactory) -> tuple[HsmConfig, Pkcs11KeyService]:
    smtoken.build(MODULE.parent)
    config = _config(tmp_path_factory.mktemp("smtoken"))
    assert smtoken.ensure_token(config) is True
    assert smtoken.ensure_token(config) is False  # idempotent
    token = p11.open_token(config)
    for slot in ceremony.CENTRE_SLOTS:
        key = master_key(slot, SM4, 1)
        comps = components_of(key)
        info = ceremony.import_master(
            token, slot, comps, [keyscheme.kcv(c, SM4) for c in comps], SM4, 1,
            expected_kcv=keyscheme.kcv(key, SM4),
        )  # fmt: skip
        assert info.kcv == keyscheme.kcv(key, SM4) and info.kcv_source == "hsm"
    comps = components_of(KLK_SM4)
    info = ceremony.import_klk_master(
        token, comps, [keyscheme.kcv(c, SM4) for c in comps], 1, alg=SM4
    )
    assert info.label == "ykt:klk:sm4:v1" and info.kcv == keyscheme.kcv(KLK_SM4, SM4)
    return config, Pkcs11KeyService(token, REGION)


def _oracle(cic: str) -> SoftwareCardCrypto:
    return SoftwareCardCrypto(
        {slot: master_key(slot, SM4, 1) for slot in KeySlot},
        (keyscheme.card_factor(cic),), SM4, klk_master=KLK_SM4,
    )  # fmt: skip


def test_module_offers_exactly_the_table(sm_env: tuple[HsmConfig, Pkcs11KeyService]) -> None:
    _, service = sm_env
    table = vendors.TABLES["ibm"]
    with service.token.use() as session:
        offered = {int(m) for m in session.token.slot.get_mechanisms()}
    assert offered == {v for k, v in table.module_conf().items() if k.startswith("mech.")}
    assert "Yikatong SM test module" in service.token.manufacturer_id


def test_card_crypto_matches_the_software_scheme(
    sm_env: tuple[HsmConfig, Pkcs11KeyService],
) -> None:
    _, service = sm_env
    cic = card_code(SERIAL)
    oracle = _oracle(cic)
    challenge, data = os.urandom(8), b"\x84\x20\x00\x01\x0c" + os.urandom(8)
    factor, random = os.urandom(8), os.urandom(8)
    with service.card_crypto(CardKeyRef(cic, algorithm=SM4)) as crypto:
        for slot in (KeySlot.IRK, KeySlot.EAK, KeySlot.KMC, KeySlot.PUK):
            assert crypto.kcv(slot) == keyscheme.kcv(oracle.card_key(slot), SM4)
        assert crypto.external_auth(KeySlot.EAK, challenge) == oracle.external_auth(
            KeySlot.EAK, challenge
        )
        assert crypto.mac_block(KeySlot.KMC, data, challenge) == oracle.mac_block(
            KeySlot.KMC, data, challenge
        )
        assert crypto.encrypt(KeySlot.KMC, b"123456") == oracle.encrypt(KeySlot.KMC, b"123456")
        answer = crypto.internal_auth_response(factor, random)
        assert answer == oracle.internal_auth_response(factor, random)
        wrapped = crypto.wrapped_card_key(KeySlot.IRK)
        assert wrapped == oracle.wrapped_card_key(KeySlot.IRK) and len(wrapped) == 19
        klk = oracle.key_loading_key()
        assert keyscheme.unwrap_card_key(klk, wrapped, SM4) == oracle.card_key(KeySlot.IRK)
        assert crypto.klk_kcv() == keyscheme.kcv(klk, SM4)
    service.verify_internal_auth(CardKeyRef(cic, algorithm=SM4), factor, random, answer)
    with pytest.raises(CryptogramMismatch):
        service.verify_internal_auth(CardKeyRef(cic, algorithm=SM4), factor, random, bytes(16))


def test_keys_never_leave_the_module(
    sm_env: tuple[HsmConfig, Pkcs11KeyService], tmp_path: Path
) -> None:
    config, service = sm_env
    with service.token.use() as session:
        master = p11.find_one(session, ceremony.master_label(KeySlot.IRK, SM4, 1))
        with pytest.raises(AttributeSensitive):
            master[Attribute.VALUE]
        assert master[Attribute.SENSITIVE] and not master[Attribute.EXTRACTABLE]
        # a full-length key derived as "not sensitive" would be a card key in clear: refused
        with pytest.raises(HsmError), p11.translate_errors("deriving"):
            p11.derive(master, SM4, bytes(16), template={
                Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True,
                **p11.capabilities(Attribute.ENCRYPT)})  # fmt: skip
    # the token file holds no master in clear
    assert config.sm_store is not None
    stored = (config.sm_store / "token.bin").read_bytes()
    assert master_key(KeySlot.IRK, SM4, 1) not in stored and KLK_SM4 not in stored


def test_wrong_pin_is_refused(sm_env: tuple[HsmConfig, Pkcs11KeyService]) -> None:
    config, _ = sm_env
    script = (
        "import sys; from pathlib import Path; from hsm.config import HsmConfig;"
        "from hsm import pkcs11 as p11; from hsm.errors import HsmUnavailable\n"
        f"c = HsmConfig(module=Path({str(MODULE)!r}), token_label='ykt-sm', "
        f"pin_source=lambda: '0000', vendor='ibm', sm_conf=Path({str(config.sm_conf)!r}), "
        f"sm_store=Path({str(config.sm_store)!r}))\n"
        "try:\n    p11.open_token(c).session()\nexcept HsmUnavailable as e:\n"
        "    print(e.ckr); sys.exit(0)\nsys.exit(1)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=False, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "CKR_PIN_INCORRECT" in proc.stdout


def test_sm4_card_personalised_and_authenticated_through_the_module(
    sm_env: tuple[HsmConfig, Pkcs11KeyService],
) -> None:
    _, service = sm_env
    serial = bytes.fromhex("1122334455667788")
    cic = card_code(serial)
    oracle = _oracle(cic)
    profile = social_security_profile(generation=3, algorithm=SM4, financial=False)
    card = blank_card(serial, oracle.card_key(KeySlot.KMC), SM4,
                      klk=oracle.key_loading_key(), profile=profile)  # fmt: skip
    reader = InProcessReader(card)
    data = perso_data(serial, spec_version=profile.spec_version)
    data = perso.CardPersoData(**{**data.__dict__, "financial": None})
    ref = CardKeyRef(cic, algorithm=SM4)
    ceremony.generate_sm2_signing_key(service.token)  # the issuer's SM2 key, in the module
    with service.card_crypto(ref) as crypto:
        perso.personalise(reader, crypto, data, profile, certifier=service)
    for slot in (KeySlot.IRK, KeySlot.EAK, KeySlot.PUK):
        assert card.state.keys[slot] == oracle.card_key(slot)  # loaded by WRITE KEY, unwrapped
    reader.connect()
    from cardspec import cardops

    ssse = reader.transmit(bytes.fromhex("00A404000F7378312E73682EC9E7BBE1B1A3D5CF00"))
    assert ssse[-2:] == b"\x90\x00" and bytes.fromhex("9F0C038601 03".replace(" ", "")) in ssse
    factor, random = os.urandom(8), os.urandom(8)
    answer = cardops.internal_authenticate(reader, factor, random)
    service.verify_internal_auth(ref, factor, random, answer)  # checked inside the module
    # second proof: the chip's SM2 signature under the key the issuer certified in the module
    card_cert, issuer_cert = cardops.read_certificates(reader)
    issuer_public = service.sm2_public_key()
    assert sm2.check_certificate(issuer_cert, issuer_public).public == issuer_public
    challenge = os.urandom(32)
    signature = cardops.sm2_internal_authenticate(reader, challenge)
    cardops.verify_chip_sm2(card_cert, issuer_public, cic, challenge, signature)
    # the API's check (hsm.internal_auth.check_chip_sm2): issuer key read from the module
    from hsm.internal_auth import check_chip_sm2

    check_chip_sm2(service, ref, challenge, card_cert, signature)
    with pytest.raises(CryptogramMismatch, match="SM2 second proof"):
        check_chip_sm2(service, ref, challenge + b"x", card_cert, signature)
    with pytest.raises(CryptogramMismatch, match="another card"):
        check_chip_sm2(service, CardKeyRef("0" * 32, algorithm=SM4), challenge, card_cert,
                       signature)  # fmt: skip


def test_sm4_chips_of_a_supplier_personalised_through_the_module(
    sm_env: tuple[HsmConfig, Pkcs11KeyService],
) -> None:
    """The chip-supplier path on SM4: the supplier's delivery key set (KMC and KLK masters, both
    SM4) imported into the module; the supplier makes its chip with pyca/cryptography's SM4
    (the serial as the only factor); the chip is personalised with its KMC and KLK derived in
    the module and the issuer's card keys loaded in the SM4 key-loading form."""
    _, service = sm_env
    supplier, serial = "acme-sm", bytes.fromhex("5A01000000000042")
    masters = {"kmc": bytes.fromhex("0F1E2D3C4B5A69788796A5B4C3D2E1F0"),
               "klk": bytes.fromhex("F0E1D2C3B4A5968778695A4B3C2D1E0F")}  # fmt: skip
    for kind, key in masters.items():
        comps = components_of(key)
        info = ceremony.import_supplier_master(
            service.token, supplier, kind, comps, [keyscheme.kcv(c, SM4) for c in comps], SM4,
            expected_kcv=keyscheme.kcv(key, SM4),
        )  # fmt: skip
        assert info.label == f"ykt:supplier:{supplier}:{kind}:sm4:v1"

    def supplier_sm4(key: bytes) -> bytes:  # the supplier's own diversification
        block = serial + bytes(b ^ 0xFF for b in serial)
        return Cipher(algorithms.SM4(key), modes.ECB()).encryptor().update(block)

    chip_kmc, chip_klk = supplier_sm4(masters["kmc"]), supplier_sm4(masters["klk"])
    cic = card_code(serial)
    profile = social_security_profile(generation=3, algorithm=SM4, financial=False)
    card = blank_card(serial, chip_kmc, SM4, klk=chip_klk, profile=profile)
    reader = InProcessReader(card)
    data = perso_data(serial, spec_version=profile.spec_version)
    data = perso.CardPersoData(**{**data.__dict__, "financial": None})
    ceremony.generate_sm2_signing_key(service.token)
    made = CardKeyRef(cic, algorithm=SM4, chip_maker=(supplier, 1))
    with service.card_crypto(made) as crypto:
        assert crypto.kcv(KeySlot.KMC) == keyscheme.kcv(chip_kmc, SM4)  # a delivery's KCVs
        assert crypto.klk_kcv() == keyscheme.kcv(chip_klk, SM4)
        perso.personalise(reader, crypto, data, profile, certifier=service)
    oracle = _oracle(cic)
    for slot in (KeySlot.IRK, KeySlot.EAK, KeySlot.PUK):
        assert card.state.keys[slot] == oracle.card_key(slot)
    from cardspec import cardops

    reader.connect()
    cardops.select_df(reader, profile, "SSSE")
    factor, random = os.urandom(8), os.urandom(8)
    answer = cardops.internal_authenticate(reader, factor, random)
    service.verify_internal_auth(CardKeyRef(cic, algorithm=SM4), factor, random, answer)


def test_vendor_without_derivation_refuses_sm4_card_keys(tmp_path: Path) -> None:
    """The ``swxa`` table names no SM4 derive mechanism: the module then offers none and SM4
    card keys are refused with a clear error (never derived elsewhere)."""
    config = _config(tmp_path, vendor="swxa")
    assert smtoken.ensure_token(config) is True
    script = (
        "from pathlib import Path; from hsm.config import HsmConfig; from hsm import ceremony\n"
        "from hsm import pkcs11 as p11; from hsm.errors import MechanismUnavailable\n"
        "from hsm.service import Pkcs11KeyService, CardKeyRef\n"
        "from cardspec.keyscheme import Algorithm, KeySlot\n"
        f"c = HsmConfig(module=Path({str(MODULE)!r}), token_label='ykt-sm', "
        f"pin_source=lambda: '4321', vendor='swxa', sm_conf=Path({str(config.sm_conf)!r}), "
        f"sm_store=Path({str(config.sm_store)!r}))\n"
        "t = p11.open_token(c)\n"
        "for f in (lambda: ceremony.generate_master(t, KeySlot.IRK, Algorithm.SM4),\n"
        "          lambda: Pkcs11KeyService(t).card_crypto(\n"
        "              CardKeyRef('0'*32, algorithm=Algorithm.SM4))):\n"
        "    try:\n        f()\n    except MechanismUnavailable as e:\n"
        "        print('refused:', e)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=False, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("refused:") == 2 and "sm4_ecb_encrypt_data" in proc.stdout


def test_sm4_chip_keys_to_the_maker_under_an_sm4_transport_key(
    sm_env: tuple[HsmConfig, Pkcs11KeyService],
) -> None:
    """A blank SM4 chip's KMC and KLK leave the module for its maker in the one key-loading
    rule (``keyscheme.wrap_card_key``: SM4-ECB || KCV) under an SM4 transport key; the maker's
    copy of the transport key unwraps them (KCV checked) to the software scheme's keys."""
    _, service = sm_env
    transport = bytes.fromhex("8899AABBCCDDEEFF0011223344556677")
    comps = components_of(transport)
    info = ceremony.import_transport_key(
        service.token, "maker-sm4", comps, [keyscheme.kcv(c, SM4) for c in comps], alg=SM4,
        expected_kcv=keyscheme.kcv(transport, SM4),
    )  # fmt: skip
    assert info.label == "ykt:transport:maker-sm4" and info.kcv_source == "import record"
    listed = {k.label: k for k in ceremony.list_keys(service.token)}
    assert listed[info.label].algorithm == "sm4" and listed[info.label].kind == "transport"
    with pytest.raises(HsmError, match="aes or sm4"):
        ceremony.import_transport_key(service.token, "x", comps, [b"\0" * 3] * 2,
                                      alg=Algorithm.DES3)  # fmt: skip
    cic = card_code(bytes.fromhex("0102030405060708"))
    oracle, ref = _oracle(cic), CardKeyRef(cic, algorithm=SM4)
    kmc = service.export_card_keys(ref, [KeySlot.KMC], "maker-sm4")[KeySlot.KMC]
    klk = service.export_key_loading_key(ref, "maker-sm4")
    assert kmc == keyscheme.wrap_card_key(transport, oracle.card_key(KeySlot.KMC), SM4)
    assert klk == keyscheme.wrap_card_key(transport, oracle.key_loading_key(), SM4)
    assert len(kmc) == len(klk) == 19
    assert keyscheme.unwrap_card_key(transport, kmc, SM4) == oracle.card_key(KeySlot.KMC)
    assert keyscheme.unwrap_card_key(transport, klk, SM4) == oracle.key_loading_key()
    with pytest.raises(ValueError, match="KCV"):
        keyscheme.unwrap_card_key(bytes(16), kmc, SM4)


def test_unknown_vendor_is_a_clear_error() -> None:
    with pytest.raises(HsmError, match="unknown HSM vendor table"):
        vendors.table("acme")


def test_list_keys_shows_sm4_sets(sm_env: tuple[HsmConfig, Pkcs11KeyService]) -> None:
    _, service = sm_env
    listed = {k.label: k for k in ceremony.list_keys(service.token)}
    irk = listed["ykt:irk:sm4:v1"]
    assert irk.algorithm == "sm4" and irk.kcv == keyscheme.kcv(master_key(KeySlot.IRK, SM4, 1), SM4)
    assert listed["ykt:klk:sm4:v1"].kind == "klk"
    assert ceremony.current_version(service.token, SM4) == 1
    with service.token.use() as session:
        assert all(
            o.label == ceremony.SM2_SIGNING_LABEL
            for o in session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY})
        )


def test_sm_module_needs_an_sm_table(tmp_path: Path) -> None:
    with pytest.raises(HsmError, match="needs an SM mechanism table"):
        smtoken.ensure_token(_config(tmp_path, vendor="standard"))


def test_sm2_signature_in_the_module_verified_by_gmssl(
    sm_env: tuple[HsmConfig, Pkcs11KeyService],
) -> None:
    """The issuer's SM2 key is made in the module by ``init_keys`` of an SM4 key set; its
    signatures (SM3, default user identity) verify with gmssl, a pure-Python SM2."""
    from gmssl import sm2

    _, service = sm_env
    created = ceremony.init_keys(service.token, SM4)
    assert set(created) <= {ceremony.SM2_SIGNING_LABEL}  # masters and KLK were imported
    assert ceremony.init_keys(service.token, SM4) == []
    public = service.sm2_public_key()
    verifier = sm2.CryptSM2(private_key=None, public_key=public[1:].hex())
    data = b"ykt card certificate body " + os.urandom(20)
    signature = service.sign_sm2(data)
    assert len(signature) == 64
    assert verifier.verify_with_sm3(signature.hex(), data)
    assert not verifier.verify_with_sm3(signature.hex(), data + b"x")
    # another user identity gives another Z_A: gmssl's default-ID check must fail
    other = service.sign_sm2(data, user_id=b"ALICE123@YAHOO.COM")
    assert not verifier.verify_with_sm3(other.hex(), data)
    with service.token.use() as session:
        private = p11.find_one(session, ceremony.SM2_SIGNING_LABEL, ObjectClass.PRIVATE_KEY)
        with pytest.raises(AttributeSensitive):
            private[Attribute.VALUE]
        digest = bytes(session.digest(b"abc", mechanism=p11.SM2["digest"]))
    assert digest == bytes.fromhex(  # GB/T 32905-2016 Annex A example 1
        "66C7F0F462EEEDD9D1F2D46BDC10E4E24167C4875CF2F7A2297DA02B8F4BA8E0"
    )
    listed = {k.label: k for k in ceremony.list_keys(service.token)}
    assert listed[ceremony.SM2_SIGNING_LABEL].algorithm == "sm2"


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(serial=st.binary(min_size=8, max_size=8), challenge=st.binary(min_size=8, max_size=8),
       data=st.binary(max_size=40))  # fmt: skip
def test_direct_path_on_the_vendor_numbers_equals_software(
    sm_env: tuple[HsmConfig, Pkcs11KeyService], serial: bytes, challenge: bytes, data: bytes
) -> None:
    """The direct calls (hsm.p11fast, entry points from C_GetFunctionList), on the vendor's
    SM4 numbers, give the software scheme's values (there is no python-pkcs11 twin of them)."""
    _, service = sm_env
    cic = card_code(serial)
    ref = CardKeyRef(cic, algorithm=SM4)
    oracle = _oracle(cic)
    with service.card_crypto(ref) as crypto:
        assert crypto.mac_block(KeySlot.UK_IDENT, data, challenge) == oracle.mac_block(
            KeySlot.UK_IDENT, data, challenge
        )
        assert crypto.external_auth(KeySlot.EAK, challenge) == oracle.external_auth(
            KeySlot.EAK, challenge
        )
        assert crypto.wrapped_card_key(KeySlot.DMK) == oracle.wrapped_card_key(KeySlot.DMK)
        assert crypto.internal_auth_response(serial, challenge) == oracle.internal_auth_response(
            serial, challenge
        )


def test_verification_hot_path_and_challenge_key_on_an_sm4_token(
    sm_env: tuple[HsmConfig, Pkcs11KeyService],
) -> None:
    """The API's INTERNAL AUTHENTICATE check (direct C_* calls) and its challenge key work on an
    HSM holding SM4 key sets only."""
    from hsm.internal_auth import challenge_key, check_internal_auth

    _, service = sm_env
    cic = card_code(bytes.fromhex("0102030405060708"))
    factor, random = os.urandom(8), os.urandom(8)
    answer = _oracle(cic).internal_auth_response(factor, random)
    ref = CardKeyRef(cic, algorithm=SM4)
    check_internal_auth(service, ref, factor, random, answer)
    with pytest.raises(CryptogramMismatch):
        check_internal_auth(service, ref, factor, random, bytes(16))
    key = challenge_key(service)
    assert len(key) == 32 and key == challenge_key(service)


def test_feed_and_checkpoint_signatures_with_sm2_by_setting(
    sm_env: tuple[HsmConfig, Pkcs11KeyService], tmp_path: Path
) -> None:
    """``[hsm] signing = "sm2"``: the key service signs with the issuer's SM2 key in the module;
    its public key PEM and signatures verify with the project's verifiers (status feed client,
    audit checkpoints) and with OpenSSL's command line, an independent SM2/SPKI parser."""
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    from hsm.errors import SignatureInvalid
    from hsm.service import verify_signature
    from issuance.audit import verify_checkpoint_signature as verify_checkpoint
    from issuance.errors import IntegrityError

    config, base = sm_env
    ceremony.generate_sm2_signing_key(base.token)
    service = Pkcs11KeyService.from_config(replace(config, signing="sm2"))
    pem = service.public_key_pem()
    assert sm2.public_from_pem(pem) == service.sm2_public_key()
    data = b"ykt-status-feed/1 42 " + os.urandom(16).hex().encode()
    signature = service.sign(data)
    verify_signature(pem, data, signature)
    verify_checkpoint(pem, data, signature)
    with pytest.raises(SignatureInvalid):
        verify_signature(pem, data + b"x", signature)
    with pytest.raises(IntegrityError):
        verify_checkpoint(pem.decode(), data + b"x", signature)
    (tmp_path / "pub.pem").write_bytes(pem)
    (tmp_path / "msg").write_bytes(data)
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    (tmp_path / "sig").write_bytes(encode_dss_signature(r, s))
    proc = subprocess.run(
        ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(tmp_path / "pub.pem"),
         "-rawin", "-in", str(tmp_path / "msg"), "-sigfile", str(tmp_path / "sig"),
         "-digest", "sm3", "-pkeyopt", "distid:1234567812345678"],
        capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 0 and "Verified Successfully" in proc.stdout, proc.stderr
    # the default stays ECDSA P-256
    assert Pkcs11KeyService.from_config(config).signing == "ecdsa-p256"


def test_token_store_takes_concurrent_writers(tmp_path: Path) -> None:
    """Two processes creating token keys at once (each C_GenerateKey rewrites the token file
    under an flock, after re-reading what the other wrote): every key is kept."""
    config = _config(tmp_path)
    assert smtoken.ensure_token(config) is True
    script = (
        "import sys; from pathlib import Path; from hsm.config import HsmConfig\n"
        "from hsm import ceremony, pkcs11 as p11\n"
        "from cardspec.keyscheme import Algorithm, KeySlot\n"
        f"c = HsmConfig(module=Path({str(MODULE)!r}), token_label='ykt-sm', "
        f"pin_source=lambda: '4321', vendor='ibm', sm_conf=Path({str(config.sm_conf)!r}), "
        f"sm_store=Path({str(config.sm_store)!r}))\n"
        "t = p11.open_token(c)\n"
        "for v in range(int(sys.argv[1]), int(sys.argv[1]) + 4):\n"
        "    ceremony.generate_master(t, KeySlot.IRK, Algorithm.SM4, v)\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(start)], stderr=subprocess.PIPE)
             for start in (1, 11)]  # fmt: skip
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    listing = (
        "from pathlib import Path; from hsm.config import HsmConfig\n"
        "from hsm import ceremony, pkcs11 as p11\n"
        f"c = HsmConfig(module=Path({str(MODULE)!r}), token_label='ykt-sm', "
        f"pin_source=lambda: '4321', vendor='ibm', sm_conf=Path({str(config.sm_conf)!r}), "
        f"sm_store=Path({str(config.sm_store)!r}))\n"
        "print(sorted(k.version for k in ceremony.list_keys(p11.open_token(c))))\n"
    )
    out = subprocess.run([sys.executable, "-c", listing], capture_output=True, text=True,
                         check=True, timeout=60).stdout  # fmt: skip
    assert out.strip() == str([1, 2, 3, 4, 11, 12, 13, 14])


def test_sm4_bank_keys_and_issuer_scripts_through_the_module(
    sm_env: tuple[HsmConfig, Pkcs11KeyService],
) -> None:
    """The bank's SM4 issuer master keys imported by ceremony (components, KCVs) into its own
    key domain of the SM module; an SM4 card's MK-AC / MK-SMI / MK-SMC derived there (the PBOC
    one-block option A, the vendor's SM4 ECB-encrypt-data) and its issuer script computed there
    (SM4 session keys, SM4 MAC algorithm 1, SM4-CBC PIN encipherment) equal the independent
    oracle (gmssl's SM4, tests/cardspec/emv_oracle.py) and the software twin."""
    _, service = sm_env
    fin = (KeySlot.FIN_AC, KeySlot.FIN_SMI, KeySlot.FIN_SMC)
    pan, psn = "6217000012345678901", "01"
    for slot in fin:
        key = master_key(slot, SM4, 1)
        comps = components_of(key)
        info = ceremony.import_bank_master(
            service.token, TEST_BANK, slot, comps, [keyscheme.kcv(c, SM4) for c in comps], SM4,
            1, expected_kcv=keyscheme.kcv(key, SM4),
        )  # fmt: skip
        assert info.label == f"ykt:bank:{TEST_BANK}:{ceremony.BANK_KEYS[slot]}:sm4:v1"
    assert ceremony.bank_versions(service.token, TEST_BANK, SM4) == [1]
    ref = CardKeyRef(card_code(SERIAL), 1, SM4, pan=pan, psn=psn, bank=TEST_BANK)
    from hsm.service import SoftwareKeyService

    twin = SoftwareKeyService({}, REGION, bank_masters={
        (TEST_BANK, slot, SM4, 1): master_key(slot, SM4, 1) for slot in fin
    })  # fmt: skip
    mks = {slot: oracle_icc_mk(SM4, master_key(slot, SM4, 1), pan, psn) for slot in fin}
    with service.card_crypto(ref) as hsm, twin.card_crypto(ref) as soft:
        for slot in fin:
            assert hsm.kcv(slot) == keyscheme.kcv(mks[slot], SM4), slot
        for size in (0, 1, 16, 17, 33):
            atc, ac, data = 3 + size, os.urandom(8), os.urandom(size)
            header = bytes([0x84, 0x24, 0x00, 0x02])
            mac = oracle_script_mac(SM4, mks[KeySlot.FIN_SMI], header, atc.to_bytes(2, "big"),
                                    ac, data)  # fmt: skip
            assert hsm.issuer_script_mac(header, atc, ac, data) == mac, size
            assert soft.issuer_script_mac(header, atc, ac, data) == mac, size
        ac = os.urandom(8)
        enc = oracle_pin(SM4, mks[KeySlot.FIN_SMC], ac, "802413")
        block = bytes.fromhex("26802413FFFFFFFF")
        assert hsm.encipher_pin_block(ac, block) == soft.encipher_pin_block(ac, block) == enc


CHAIN_SUPPLIER = "chain-sm"


@pytest.fixture(scope="module")
def sm_supplier(sm_env: tuple[HsmConfig, Pkcs11KeyService]) -> dict[str, bytes]:
    """A chip supplier's SM4 delivery key set (random clear masters: the oracle)."""
    _, service = sm_env
    masters = {kind: os.urandom(16) for kind in ("kmc", "klk")}
    for kind, key in masters.items():
        comps = components_of(key)
        ceremony.import_supplier_master(
            service.token, CHAIN_SUPPLIER, kind, comps, [keyscheme.kcv(c, SM4) for c in comps],
            SM4, expected_kcv=keyscheme.kcv(key, SM4),
        )  # fmt: skip
    return masters


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    serial=st.binary(min_size=8, max_size=8),
    region=st.booleans(),
    chip=st.booleans(),
    factor=st.binary(min_size=8, max_size=8),
    random=st.binary(min_size=8, max_size=8),
)
def test_the_one_chain_on_sm4_gives_the_reference_keys(
    sm_env: tuple[HsmConfig, Pkcs11KeyService],
    sm_supplier: dict[str, bytes],
    serial: bytes,
    region: bool,
    chip: bool,
    factor: bytes,
    random: bytes,
) -> None:
    """``hsm.chain`` on the vendor's SM4 numbers (see test_hsm_chain.py for 3DES and AES):
    every card slot and the KLK derived by KeyChain over CardData (a supplier's chip: KMC and
    KLK by chip_data from its key set), and through its users (the card's crypto,
    INTERNAL AUTHENTICATE), equal ``cardspec.keyscheme`` by KCV and by cryptogram."""
    _, service = sm_env
    cic = card_code(serial)
    ref = CardKeyRef(cic, algorithm=SM4, region_factor=region,
                     chip_maker=(CHAIN_SUPPLIER, 1) if chip else None)  # fmt: skip
    factors = [keyscheme.card_factor(cic)]
    if region:
        factors.insert(0, keyscheme.region_factor(REGION))
    chip_factor = [keyscheme.card_factor(cic)]

    def reference(slot: KeySlot, *, from_chip: bool = False) -> bytes:
        if from_chip and chip and slot is KeySlot.KMC:
            return keyscheme.derive_card_key(sm_supplier["kmc"], chip_factor, SM4)
        return keyscheme.derive_card_key(master_key(slot, SM4, 1), factors, SM4)

    klk = keyscheme.derive_klk(KLK_SM4, factors, SM4)
    chip_klk = keyscheme.derive_card_key(sm_supplier["klk"], chip_factor, SM4) if chip else klk
    tmpl = p11fast.key_template(SM4, Attribute.ENCRYPT, extractable=False)
    fast = service.fast
    with service.token.use() as session:
        service.sync(service.token.generation)
        keys = KeyChain(fast, session.handle)
        data = CardData(ref, REGION)
        for slot in ceremony.CENTRE_SLOTS:
            key = keys.derive(service.card_master_synced(ref, slot).handle, SM4,
                              data.of(slot, SM4), tmpl)  # fmt: skip
            kcv = fast.encrypt_ecb(session.handle, key, SM4, KCV_BLOCK[SM4])[:3]
            keys.destroy(key)
            assert kcv == keyscheme.kcv(reference(slot), SM4), slot
        key = keys.derive(service.klk_master_synced(1, SM4).handle, SM4,
                          data.of(KeySlot.KMC, SM4), tmpl)  # fmt: skip
        kcv = fast.encrypt_ecb(session.handle, key, SM4, KCV_BLOCK[SM4])[:3]
        keys.destroy(key)
        assert kcv == keyscheme.kcv(klk, SM4)
        if chip:
            for kind, oracle_key in (("kmc", reference(KeySlot.KMC, from_chip=True)),
                                     ("klk", chip_klk)):  # fmt: skip
                base = service.supplier_master_synced(CHAIN_SUPPLIER, kind, SM4, 1).handle
                key = keys.derive(base, SM4, chip_data(ref, SM4), tmpl)
                kcv = fast.encrypt_ecb(session.handle, key, SM4, KCV_BLOCK[SM4])[:3]
                keys.destroy(key)
                assert kcv == keyscheme.kcv(oracle_key, SM4), kind
        levels = len(factors)
        assert keys.destroyed == (len(ceremony.CENTRE_SLOTS) + 1) * levels + (2 if chip else 0)
    with service.card_crypto(ref) as crypto:
        for slot in ceremony.CENTRE_SLOTS:
            assert crypto.kcv(slot) == keyscheme.kcv(reference(slot, from_chip=True), SM4), slot
        assert crypto.klk_kcv() == keyscheme.kcv(chip_klk, SM4)
        assert crypto.wrapped_card_key(KeySlot.PUK) == keyscheme.wrap_card_key(
            chip_klk, reference(KeySlot.PUK), SM4
        )
    assert expected_response(service, ref, factor, random) == keyscheme.internal_auth_response(
        reference(KeySlot.IRK), factor, random, SM4
    )
