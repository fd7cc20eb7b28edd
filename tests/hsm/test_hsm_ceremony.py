"""Key ceremonies in SoftHSM: attributes (python-pkcs11 and pkcs11-tool), KCV checks, rotation,
listing, transport keys, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hsm_helpers import REGION, TEST_BANK, TRANSPORT_KEY, HsmEnv, components_of, master_key
from pkcs11 import Attribute, ObjectClass

from cardspec import keyscheme
from cardspec.keyscheme import Algorithm, KeySlot
from hsm import ceremony, softhsm
from hsm import pkcs11 as p11
from hsm.errors import KcvMismatch, KeyExists
from hsm.service import CardKeyRef
from yikatong.wiring import hsm_config

pytestmark = pytest.mark.softhsm
CIC = "330182D156000005" + "00000000000000A1"


def test_master_keys_are_sensitive_and_never_extractable(hsm_env: HsmEnv) -> None:
    generated = ceremony.generate_master(hsm_env.token, KeySlot.PUK, Algorithm.AES, 7)
    assert generated.sensitive and not generated.extractable
    with hsm_env.token.use() as session:
        keys = [
            o
            for o in session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY})
            if (o.label or "").startswith("ykt:") and "transport" not in o.label
        ]
        assert len(keys) >= 2 * len(KeySlot)
        for key in keys:
            assert key[Attribute.SENSITIVE] is True
            assert key[Attribute.EXTRACTABLE] is False
            assert key[Attribute.TOKEN] is True
            assert key[Attribute.ENCRYPT] is False  # C_Encrypt under a master = card keys
            assert key[Attribute.DERIVE] is True
        assert session.get_key(label=generated.label)[Attribute.NEVER_EXTRACTABLE] is True


def test_pkcs11_tool_sees_non_extractable_keys(hsm_env: HsmEnv) -> None:
    """Independent check with OpenSC's pkcs11-tool on the same token."""
    generated = ceremony.generate_master(hsm_env.token, KeySlot.DMK, Algorithm.AES, 8)
    env = {**os.environ, "SOFTHSM2_CONF": str(hsm_env.config.softhsm_conf)}
    proc = subprocess.run(
        [
            "pkcs11-tool",
            "--module",
            str(hsm_env.config.module),
            "--token-label",
            hsm_env.config.token_label,
            "-l",
            "-p",
            hsm_env.config.user_pin(),
            "-O",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    blocks = proc.stdout.split("Secret Key Object")[1:]
    by_label = {}
    for block in blocks:
        label = next(
            line.split(":", 1)[1].strip()
            for line in block.splitlines()
            if line.strip().startswith("label:")
        )
        by_label[label] = block

    def access(label: str) -> str:
        return next(line for line in by_label[label].splitlines() if "Access:" in line)

    # imported masters: sensitive, not extractable (pkcs11-tool prints "extractable" if it is)
    algs = (Algorithm.DES3, Algorithm.AES)
    labels = [ceremony.card_master_label(s, a, 1, TEST_BANK) for a in algs for s in KeySlot]
    for label in [*labels, ceremony.klk_label(1)]:  # the key-loading key master too
        assert "sensitive" in access(label), label
        assert "extractable" not in access(label), label
        assert "Usage:      derive" in by_label[label]
    # generated in the HSM: also "always sensitive, never extractable"
    assert "always sensitive" in access(generated.label)
    assert "never extractable" in access(generated.label)


def test_component_with_wrong_kcv_is_refused(hsm_env: HsmEnv) -> None:
    key = os.urandom(16)
    comps = components_of(key, 2)
    kcvs = [keyscheme.kcv(c, Algorithm.DES3) for c in comps]
    bad = [kcvs[0], bytes([kcvs[1][0] ^ 1]) + kcvs[1][1:]]
    with pytest.raises(KcvMismatch) as err:
        ceremony.import_master(hsm_env.token, KeySlot.EAK, comps, bad, Algorithm.DES3, 9)
    assert err.value.details["component"] == 2
    with hsm_env.token.use() as session:
        assert not p11.exists(session, ceremony.master_label(KeySlot.EAK, Algorithm.DES3, 9))
    # a wrong final KCV is refused too, and nothing stays behind
    with pytest.raises(KcvMismatch):
        ceremony.import_master(
            hsm_env.token, KeySlot.EAK, comps, kcvs, Algorithm.DES3, 9, expected_kcv=b"\x00\x00\x00"
        )
    with hsm_env.token.use() as session:
        assert not p11.exists(session, ceremony.master_label(KeySlot.EAK, Algorithm.DES3, 9))
    info = ceremony.import_master(hsm_env.token, KeySlot.EAK, comps, kcvs, Algorithm.DES3, 9)
    assert info.kcv == keyscheme.kcv(key, Algorithm.DES3)
    with pytest.raises(KeyExists):
        ceremony.import_master(hsm_env.token, KeySlot.EAK, comps, kcvs, Algorithm.DES3, 9)


def test_list_keys_shows_kcvs_computed_in_the_hsm(hsm_env: HsmEnv) -> None:
    listed = {k.label: k for k in ceremony.list_keys(hsm_env.token)}
    for alg in (Algorithm.DES3, Algorithm.AES):
        for slot in KeySlot:
            info = listed[ceremony.card_master_label(slot, alg, 1, TEST_BANK)]
            kind = "bank" if slot.financial else "master"  # the bank's IMKs: its own domain
            assert info.kind == kind and info.slot is slot and info.version == 1
            assert info.kcv == keyscheme.kcv(master_key(slot, alg, 1), alg)
    klk = listed[ceremony.klk_label(1)]
    assert klk.kind == "klk" and klk.algorithm == "aes" and klk.version == 1
    assert klk.kcv == keyscheme.kcv(hsm_env.klk_masters[1], Algorithm.AES)
    assert klk.kcv_source == "hsm" and klk.sensitive and not klk.extractable
    assert listed["ykt:signing:v1"].kind == "signing"
    # a transport key may only wrap: its KCV is the one recorded at import (CKO_DATA)
    transport = listed["ykt:transport:bureau1"]
    assert transport.kind == "transport" and transport.kcv_source == "import record"
    assert transport.kcv == keyscheme.kcv(TRANSPORT_KEY, Algorithm.AES)
    with hsm_env.token.use() as session:
        (record,) = session.get_objects(
            {Attribute.CLASS: ObjectClass.DATA, Attribute.LABEL: "ykt:kcv:ykt:transport:bureau1"}
        )
        assert record[Attribute.TOKEN] is True and record[Attribute.MODIFIABLE] is False


def test_generated_transport_key_components_combine_to_the_hsm_key(hsm_env: HsmEnv) -> None:
    info, parts = ceremony.generate_transport_key(hsm_env.token, "bureau-gen", 3)
    assert len(parts) == 3
    combined = bytearray(16)
    for comp, check in parts:
        assert keyscheme.kcv(comp, Algorithm.AES) == check
        for i, b in enumerate(comp):
            combined[i] ^= b
    assert info.kcv == keyscheme.kcv(bytes(combined), Algorithm.AES)
    # the bureau (knowing the components) unwraps what we export
    from cryptography.hazmat.primitives.keywrap import aes_key_unwrap_with_padding

    ref = CardKeyRef(CIC, algorithm=Algorithm.AES)
    wrapped = hsm_env.service.export_card_keys(ref, [KeySlot.IRK], "bureau-gen")
    irk = aes_key_unwrap_with_padding(bytes(combined), wrapped[KeySlot.IRK])
    enc = Cipher(algorithms.AES(irk), modes.ECB()).encryptor()
    with hsm_env.service.card_crypto(ref) as crypto:
        assert crypto.kcv(KeySlot.IRK) == (enc.update(b"\x01" * 16) + enc.finalize())[:3]
    assert TRANSPORT_KEY not in bytes(combined)


def test_cli_init_creates_token_and_keys_idempotently(tmp_path: object) -> None:
    """`ykt hsm init --if-missing` in a fresh data dir (own process: own module load)."""
    env = {**os.environ, "YKT_DATA_DIR": str(tmp_path)}
    env.pop("SOFTHSM2_CONF", None)
    cmd = [sys.executable, "-m", "yikatong.cli.main", "hsm", "init", "--if-missing"]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert "created" in first.stdout and "ykt:signing:v1" in first.stdout
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stderr
    assert "created 0" not in second.stdout and "ykt:kmc" not in second.stdout
    listing = subprocess.run(
        [sys.executable, "-m", "yikatong.cli.main", "hsm", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listing.returncode == 0 and listing.stdout.count("3des") >= len(ceremony.CENTRE_SLOTS)
    from yikatong.settings import load_settings

    config = hsm_config(load_settings(environ={"YKT_DATA_DIR": str(tmp_path)}))
    assert softhsm.token_labels(config) == [config.token_label]
    assert config.region_code == REGION
