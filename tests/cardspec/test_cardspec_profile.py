"""The card profile: element formats, file encoders round trip, profile consistency."""

from __future__ import annotations

from dataclasses import replace
from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cardspec import profile as P
from cardspec import tlv
from cardspec.errors import EncodingError, ProfileError, TlvError
from cardspec.keyscheme import Algorithm, KeySlot


def test_public_facts() -> None:
    # DOMAIN.md: DF name "sx1.sh.社会保障" in GBK is 15 bytes.
    assert bytes.fromhex("7378312E73682EC9E7BBE1B1A3D5CF") == P.SOCIAL_SECURITY_DF_NAME
    prof = P.social_security_profile()
    ssse = prof.df("SSSE")
    assert ssse.df_name == P.SOCIAL_SECURITY_DF_NAME
    # 9F0C { 86 01 01 } = 3DES (9F0C is primitive in BER terms: its value is parsed explicitly)
    marker = tlv.find(ssse.fci_proprietary, 0x9F0C)
    assert marker is not None and tlv.find(marker, 0x86) == b"\x01"
    assert prof.df("MED").df_name.hex().upper() == "D15600000503"
    assert prof.df("PEN").df_name.hex().upper() == "D15600000502"
    assert prof.df("FIN").df_name.hex().upper() == "A000000333010101"
    ef05 = prof.ef("EF05")[1]
    assert [e.tag for e in ef05.elements] == [1, 2, 3, 4, 5, 6, 7]
    assert ef05.sfi == 5 and ef05.read.kind is P.Access.FREE
    assert ef05.write == P.by_key(KeySlot.UK_IDENT)
    ef06 = prof.ef("EF06")[1]
    assert [e.tag for e in ef06.elements] == [8, 9, 0x0A, 0x0B, 0x0C, 0x0D, 0x4E]
    assert [e.length for e in ef06.elements] == [18, 30, 1, 1, 3, 4, 20]
    assert prof.ef("EF15")[1].read == P.by_pin("ss")
    assert prof.ef("EF15")[1].write == P.by_key(KeySlot.UK_MEDICAL)
    assert prof.pin("ss")[1].tries == 3 and prof.pin("ss")[1].initial_must_change
    gen3 = P.social_security_profile(generation=3)
    assert gen3.ef("EF06")[1].read == P.by_key(KeySlot.EAK)
    assert gen3.spec_version == "3.00" and gen3.algorithm is Algorithm.SM4
    marker3 = tlv.find(gen3.df("SSSE").fci_proprietary, 0x9F0C)
    assert marker3 is not None and tlv.find(marker3, 0x86) == b"\x03"  # SM4 (issue 19)
    assert gen3.key_loading == "sm4-ecb-kcv-klk"
    gen3_aes = P.social_security_profile(generation=3, algorithm=Algorithm.AES)
    assert gen3_aes.algorithm is Algorithm.AES and gen3_aes.key_loading == "aes-kwp-klk"
    assert P.social_security_profile(pin_tries=6).pin("ss")[1].tries == 6


@pytest.mark.parametrize(
    ("element", "value", "encoded"),
    [
        (P.Element(1, "an", 6, P.Fmt.AN), "AB1", "414231000000"),  # an: left, 00 padded
        (P.Element(1, "cn", 4, P.Fmt.CN), "12345", "12345FFF"),  # cn: left, F padded
        (P.Element(1, "n", 3, P.Fmt.N), "1234", "001234"),  # n: right, 0 padded
        (P.Element(1, "d", 4, P.Fmt.DATE), date(1949, 12, 31), "19491231"),
        (P.Element(1, "d6", 3, P.Fmt.DATE6), date(2034, 3, 31), "340331"),
        (P.Element(1, "g", 6, P.Fmt.GBK), "张三", "D5C5C8FD0000"),
        (P.Element(1, "h", 2, P.Fmt.HEX), "ABCD", "ABCD"),
        (P.Element(1, "v", 10, P.Fmt.CN, variable=True), "621700123", "621700123F"),
    ],
)
def test_element_formats(element: P.Element, value: object, encoded: str) -> None:
    raw = element.encode(value)
    assert raw.hex().upper() == encoded
    decoded = element.decode(raw)
    if element.fmt is P.Fmt.N:
        assert decoded.lstrip("0") == str(value).lstrip("0")
    else:
        assert decoded == value


@pytest.mark.parametrize(
    ("element", "value", "fragment"),
    [
        (P.Element(1, "an", 2, P.Fmt.AN), "ABC", "exceed"),
        (P.Element(1, "an", 2, P.Fmt.AN), "张", "not encodable"),
        (P.Element(1, "cn", 2, P.Fmt.CN), "12A", "digits"),
        (P.Element(1, "d", 4, P.Fmt.DATE), "19491231", "date"),
        (P.Element(1, "b", 2, P.Fmt.B), b"\x01", "2 bytes"),
        (P.Element(1, "r", 2, P.Fmt.AN), None, "required"),
    ],
)
def test_element_errors(element: P.Element, value: object, fragment: str) -> None:
    with pytest.raises(EncodingError, match=fragment):
        element.encode(value)


def _ident() -> P.CardIdentification:
    return P.CardIdentification(
        "330182D1560000050123456789ABCDEF", "1", "2.00", "330100000001",
        date(2024, 3, 1), date(2034, 3, 1), "X00000019",
    )  # fmt: skip


def test_card_identification_records() -> None:
    records = P.encode_card_identification(_ident())
    assert records[0] == bytes.fromhex("0110330182D1560000050123456789ABCDEF")
    assert records[4] == bytes.fromhex("050420240301")
    assert records[6] == b"\x07\x09X00000019"
    assert P.decode_card_identification(records) == _ident()


def test_holder_records_and_long_names() -> None:
    holder = P.Holder("11010519491231002X", "张三", "2", "01", "110105", date(1949, 12, 31))
    records = P.encode_holder(holder)
    assert records[1][:2] == b"\x09\x1e" and records[1][2:6] == "张三".encode("gbk")
    assert records[6] == b"\x4e\x14" + bytes(20)
    assert P.decode_holder(records) == holder
    long_name = "阿" * 20  # 40 GBK bytes: 30 in tag 09, 10 in the extension 4E
    records = P.encode_holder(replace(holder, name=long_name))
    back = P.decode_holder(records)
    assert back.name == "阿" * 15 and back.name_extension == "阿" * 5
    assert back.full_name == long_name
    assert "11010519491231002X" not in repr(back)
    with pytest.raises(EncodingError):
        P.encode_holder(replace(holder, name="阿" * 30))


@given(
    st.text(alphabet="张王李赵阿依古丽·买买提ABC", min_size=1, max_size=20),
    st.sampled_from(["1", "2", "9"]),
    st.integers(1, 56),
    st.dates(min_value=date(1900, 1, 1), max_value=date(2099, 12, 31)),
)
def test_holder_roundtrip(name: str, sex: str, ethnicity: int, birth: date) -> None:
    holder = P.Holder("11010519491231002X", name, sex, f"{ethnicity:02d}", "330182", birth)
    back = P.decode_holder(P.encode_holder(holder))
    assert back.full_name == name
    assert (back.sex, back.ethnicity, back.birthplace, back.birth_date) == (
        sex, f"{ethnicity:02d}", "330182", birth,
    )  # fmt: skip


def test_other_files_roundtrip() -> None:
    med = P.MedicalData("310", "330182", "1", "11", date(2020, 1, 1))
    assert P.decode_medical(P.encode_medical(med)) == med
    pen = P.PensionData("1", "330182", date(2020, 1, 1), "11100")
    assert P.decode_pension(P.encode_pension(pen)) == pen
    fin = P.FinancialData("6217000012345678907", date(2034, 3, 31), "01", "ZHANG SAN")
    rec = P.encode_financial(fin)
    assert rec[0][0] == 0x70 and tlv.find(rec[0], 0x5A) == bytes.fromhex("6217000012345678907F")
    assert P.decode_financial(rec) == fin
    entry = P.MedicalLogEntry("20240301101500", 12345, "H33018200001", "11")
    raw = P.encode_log_entry(entry)
    assert len(raw) == P.DEFAULT_PROFILE.ef("EF18")[1].record_size
    assert P.decode_log_entry(raw) == entry


def test_financial_record_refuses_a_pan_failing_luhn() -> None:
    """Every path that writes the financial record (its encoder, personalisation's record
    values, data preparation's planners through complete_financial) refuses a PAN that fails
    the Luhn check, naming it masked."""
    from cardspec import ids, perso

    good = ids.make_pan("621700", "1234567890")
    assert good == "6217000012345678907" and ids.luhn_ok(good)
    bad = good[:-1] + "1"
    with pytest.raises(EncodingError, match=r"PAN 621700\*{9}8901 fails the Luhn check") as err:
        P.encode_financial(P.FinancialData(bad, date(2034, 3, 31), "01"))
    assert bad not in str(err.value) and err.value.element == "pan"
    with pytest.raises(EncodingError, match="Luhn"):
        P.complete_financial({"pan": "62170000123456789X", "expiry": date(2034, 3, 31)})
    code = ids.make_card_identification_code("330182", bytes(8))
    data = perso.sample_perso_data(code, pan=bad)
    with pytest.raises(EncodingError, match="Luhn"):
        perso.record_values(data, P.DEFAULT_PROFILE)
    assert perso.record_values(replace(data, financial=replace(data.financial, pan=good)),
                               P.DEFAULT_PROFILE)["SFI01"]["pan"] == good  # fmt: skip


def test_make_pan() -> None:
    from cardspec import ids
    from cardspec.errors import InvalidIdentifier

    for length in (12, 16, 19):
        pan = ids.make_pan("621226", "42", length)
        assert len(pan) == length and pan.startswith("621226") and ids.luhn_ok(pan)
    with pytest.raises(InvalidIdentifier):
        ids.make_pan("621226", "1" * 13)  # 6 + 13 + 1 > 19
    with pytest.raises(InvalidIdentifier):
        ids.make_pan("62A226", "1")
    assert ids.mask_pan("6217000012345678907") == "621700*********8907"


def test_decoders_reject_malformed_records() -> None:
    records = P.encode_card_identification(_ident())
    with pytest.raises(TlvError):
        P.decode_card_identification([records[0][:-3], *records[1:]])
    with pytest.raises(EncodingError, match="tag 02"):
        P.decode_card_identification([records[1], *records[1:]])
    with pytest.raises(TlvError, match="mandatory"):
        P.decode_financial([tlv.encode(0x70, tlv.encode(0x5A, b"\x62\x17"))])


def test_pin_blocks() -> None:
    spec_ss = P.DEFAULT_PROFILE.pin("ss")[1]
    assert spec_ss.encode("123456") == bytes.fromhex("123456")
    spec_bank = P.DEFAULT_PROFILE.pin("bank")[1]
    assert spec_bank.encode("123456") == bytes.fromhex("26123456FFFFFFFF")  # ISO 9564 format 2
    with pytest.raises(EncodingError):
        spec_ss.encode("1234")


def test_extra_application_as_data() -> None:
    housing = P.DedicatedFile(
        name="HF", fid=0xDF10, df_name=bytes.fromhex("D15600000510"), label="housing fund",
        files=(P.simple_tlv_file("EF20", 0xEF20, 0x14,
               (P.Element(0x50, "account", 12, P.Fmt.AN),), P.FREE, P.by_key(KeySlot.DMK)),),
    )  # fmt: skip
    prof = P.DEFAULT_PROFILE.with_application(housing, parent="SSSE")
    assert prof.df_path("HF") == "MF/SSSE/HF"
    assert prof.ef("EF20")[0] == "MF/SSSE/HF"
    with pytest.raises(ProfileError, match="twice"):
        prof.with_application(replace(housing, name="HF2", fid=0xDF11))


def test_profile_validation_catches_conflicts() -> None:
    with pytest.raises(ProfileError):
        P.AccessRule(P.Access.KEY)
    bad = P.DedicatedFile(name="X", fid=0xDF20, keys=(P.KeySpec(KeySlot.FIN_AC, 0x01, "dup"),))
    with pytest.raises(ProfileError, match="key id 01"):
        P.social_security_profile(financial=False).with_application(bad)
    with pytest.raises(ProfileError):
        P.get_profile("no-such-profile")
    assert P.get_profile("ssc3-aes").algorithm is Algorithm.AES
    assert P.get_profile("ssc2-3des-nofin-t6").pin("ss")[1].tries == 6
    with pytest.raises(ProfileError):
        P.get_profile("ssc2-3des-t3")  # not a canonical name
