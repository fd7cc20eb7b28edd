"""Published vectors, stored as data with their source (``vectors/*.json``), against the
card-spec code, with pyemv and psec as independent oracles; Hypothesis round trips of secure
messaging and key loading."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import psec.mac
import pyemv.mac
import pytest
from cardspec_helpers import rfc5649_unwrap, software_crypto
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.cmac import CMAC
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding
from hypothesis import given, settings
from hypothesis import strategies as st

from cardspec import ids, keyscheme, sm, tlv
from cardspec.apdu import CommandApdu
from cardspec.errors import InvalidIdentifier, SecurityError
from cardspec.keyscheme import Algorithm, KeySlot

VECTORS = Path(__file__).resolve().parent / "vectors"


def load(name: str) -> dict[str, Any]:
    data = json.loads((VECTORS / name).read_text(encoding="utf-8"))
    assert data.get("document") or all(v.get("document") for v in data["vectors"]), name
    return data


def _bytes(v: dict[str, Any], field: str) -> bytes:
    return v[f"{field}_ascii"].encode() if f"{field}_ascii" in v else bytes.fromhex(v[field])


def _pad(data: bytes, method: int) -> bytes:
    if method == 1:
        return data + bytes(-len(data) % 8)
    return keyscheme.pad_method2(data, 8)


@pytest.mark.parametrize("v", load("iso9797_mac.json")["vectors"], ids=lambda v: v["algorithm"])
def test_iso9797_macs(v: dict[str, Any]) -> None:
    key, data, expected = bytes.fromhex(v["key"]), _bytes(v, "data"), bytes.fromhex(v["expected"])
    padded = _pad(data, v["padding"])
    if v["algorithm"] == "mac1":
        # single DES = 3DES with K1 = K2: the profile's MAC algorithm 1 primitive
        assert keyscheme.cbc_mac(key * 2, padded, Algorithm.DES3) == expected
        assert psec.mac.generate_cbc_mac(key, data, v["padding"]) == expected
    else:
        assert keyscheme.retail_mac(key, padded) == expected
        assert pyemv.mac.mac_iso9797_3(key[:8], key[8:], data, v["padding"]) == expected
        assert psec.mac.generate_retail_mac(key[:8], key[8:], data, v["padding"]) == expected


@given(st.binary(min_size=16, max_size=16), st.binary(max_size=200), st.binary(min_size=8,
       max_size=8))  # fmt: skip
@settings(max_examples=60)
def test_sm_mac_is_mac_algorithm_1_of_psec(key: bytes, data: bytes, iv: bytes) -> None:
    """The secure-messaging MAC (3DES, padding method 2, IV = challenge) against psec's MAC
    algorithm 1 (zero IV): directly for a zero challenge; for a challenge, over the message
    prefixed with the block D(IV), whose CBC output is the IV itself."""
    ours = keyscheme.sm_mac_block(key, data, bytes(8), Algorithm.DES3)
    assert ours == psec.mac.generate_cbc_mac(key, data, 2)
    chained = keyscheme.sm_mac_block(key, data, iv, Algorithm.DES3)
    lead = keyscheme._ecb(key, Algorithm.DES3, iv, decrypt=True)
    assert chained == psec.mac.generate_cbc_mac(key, lead + data, 2)


@pytest.mark.parametrize("v", load("block_ciphers.json")["vectors"], ids=lambda v: v["name"][:20])
def test_block_cipher_kats(v: dict[str, Any]) -> None:
    alg = Algorithm.DES3 if v["cipher"] == "3des" else Algorithm.AES
    key, plain = bytes.fromhex(v["key"]), _bytes(v, "plaintext")
    expected = bytes.fromhex(v["expected"])
    if v["mode"] == "ecb":
        assert keyscheme._ecb(key, alg, plain) == expected
        assert keyscheme._ecb(key, alg, expected, decrypt=True) == plain
    else:
        assert keyscheme._cbc(key, alg, plain, bytes.fromhex(v["iv"])) == expected


def test_aes_cmac_vectors() -> None:
    data = load("aes_cmac.json")
    key = bytes.fromhex(data["key"])
    for v in data["vectors"]:
        mac = CMAC(algorithms.AES(key))
        mac.update(bytes.fromhex(v["message"]))
        assert mac.finalize() == bytes.fromhex(v["expected"]), v["name"]


def test_rfc5649_vectors_and_the_independent_unwrap() -> None:
    data = load("rfc5649_kwp.json")
    kek = bytes.fromhex(data["kek"])
    for v in data["vectors"]:
        key, expected = bytes.fromhex(v["key"]), bytes.fromhex(v["expected"])
        assert aes_key_wrap_with_padding(kek, key) == expected
        assert rfc5649_unwrap(kek, expected) == key  # the tests' own oracle, from the RFC
        with pytest.raises(ValueError):
            rfc5649_unwrap(kek[::-1], expected)


@given(st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16),
       st.sampled_from([Algorithm.DES3, Algorithm.AES]))  # fmt: skip
@settings(max_examples=80)
def test_key_loading_round_trip(klk: bytes, key: bytes, alg: Algorithm) -> None:
    wrapped = keyscheme.wrap_card_key(klk, key, alg)
    assert len(wrapped) == keyscheme.WRAPPED_KEY_LENGTH
    loaded = keyscheme.unwrap_card_key(klk, wrapped, alg)
    assert loaded == (keyscheme.odd_parity(key) if alg is Algorithm.DES3 else key)
    assert rfc5649_unwrap(klk, wrapped) == loaded
    with pytest.raises(ValueError):  # another chip's KLK: the integrity check fails
        keyscheme.unwrap_card_key(bytes(b ^ 0x01 for b in klk), wrapped, alg)
    with pytest.raises(ValueError):
        keyscheme.unwrap_card_key(klk, wrapped[:-1] + bytes([wrapped[-1] ^ 0x80]), alg)


@given(
    st.sampled_from([Algorithm.DES3, Algorithm.AES]),
    st.lists(st.tuples(st.integers(0, 0xFF), st.integers(0, 0xFF), st.binary(max_size=240)),
             min_size=1, max_size=4),
    st.binary(min_size=8, max_size=8),
)  # fmt: skip
@settings(max_examples=60)
def test_secure_messaging_round_trip(
    alg: Algorithm, commands: list[tuple[int, int, bytes]], challenge: bytes
) -> None:
    """What the terminal wraps the card unwraps, command after command along the MAC chain;
    any flipped byte or a replay is refused (6988)."""
    crypto = software_crypto(algorithm=alg)
    key = crypto.card_key(KeySlot.UK_IDENT)
    terminal = sm.TerminalChannel(crypto, KeySlot.UK_IDENT, challenge)
    iv = challenge
    for p1, p2, data in commands:
        cmd = terminal.wrap(CommandApdu(0x00, 0xDC, p1, p2, data))
        body, block = sm.unwrap_command(key, alg, cmd.header, cmd.data, iv)
        assert body == data and cmd.cla == 0x04
        flipped = cmd.data[:-1] + bytes([cmd.data[-1] ^ 1])
        with pytest.raises(SecurityError) as err:
            sm.unwrap_command(key, alg, cmd.header, flipped, iv)
        assert err.value.sw == 0x6988
        iv = block
    with pytest.raises(SecurityError):  # the last command replayed: the chain moved on
        sm.unwrap_command(key, alg, cmd.header, cmd.data, iv)


@pytest.mark.parametrize("v", load("gb11643.json")["vectors"], ids=lambda v: v["number"])
def test_gb11643_samples(v: dict[str, Any]) -> None:
    number = v["number"]
    assert ids.citizen_id_check_char(number[:17]) == v["check"]
    if v["valid_for_issuance"]:
        parsed = ids.validate_citizen_id(number)
        assert parsed.region_code == v["region"] and parsed.sex == v["sex"]
        assert parsed.birth_date == date.fromisoformat(v["birth_date"])
    else:
        with pytest.raises(InvalidIdentifier, match="1900"):
            ids.validate_citizen_id(number)


def _as_tree(data: bytes) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in tlv.decode(data):
        key = tlv.tag_bytes(item.tag).hex().upper()
        out[key] = _as_tree(item.value) if item.constructed else item.value.hex().upper()
    return out


def test_emv_tlv_vectors() -> None:
    fci, tags, lengths = load("emv_tlv.json")["vectors"]
    raw = bytes.fromhex(fci["tlv"])
    assert _as_tree(raw) == fci["expected"]
    top = tlv.decode_one(raw)
    assert tlv.encode_constructed(top.tag, top.children()) == raw  # re-encodes byte for byte
    for t in tags["tags"]:
        tag = int(t["tag"], 16)
        assert tlv.tag_bytes(tag).hex().upper() == t["tag"]
        assert tlv.is_constructed(tag) is t["constructed"]
        assert tlv.decode_one(tlv.encode(tag, b"\x01")).tag == tag
    for length, encoded in lengths["lengths"]:
        assert tlv.encode_length(length).hex().upper() == encoded
