"""Data preparation's records have one path: :func:`dataprep.perso_values` (what goes on the
card) encoded by :func:`cardspec.perso.plan_values`; the :class:`~cardspec.perso.CardPersoData`
of a card (:func:`dataprep.perso_data`, :func:`cardspec.perso.plan_records`) is the same
values. Proved here over random cards and holders (Hypothesis): the records equal byte for byte
the plain codec's (:func:`cardspec.profile.encode_records`, no remembered encodings) and
``plan_records``'s; the card line template gives the bytes of :func:`persofile.card_line`
(itself checked against ``json.dumps`` in test_batch_dataprep.py). Pure: no HSM, no database."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date
from typing import Any

import pytest
from card_strategies import applications, cards, chip_serials, issue_dates, people
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cardspec import ids, perso
from cardspec.errors import EncodingError
from cardspec.profile import CardProfile, encode_records
from issuance.bank import CardBankData, NoBankData
from issuance.batches import dataprep, persofile
from yikatong.settings import load_settings

_SETTINGS = load_settings(environ={"YKT_DATA_DIR": "/nonexistent/ykt-paths-test"})
#: the card profiles of data preparation: generation 2 (3DES) and 3 (AES, SM4), two PIN tries
_PROFILES = [
    dataprep.card_profile(s, alg)
    for s in (
        _SETTINGS,
        load_settings(
            environ={"YKT_DATA_DIR": "/nonexistent/ykt-paths-test", "YKT_LIFECYCLE__PIN_TRIES": "5"}
        ),
    )
    for alg in ("3des", "aes", "sm4")
]


def _codec(values: dict[str, dict], profile: CardProfile) -> dict[str, list[bytes]]:
    """The reference: every file's records by the plain codec, in profile order."""
    return {
        ef.name: encode_records(ef, values[ef.name])
        for _, ef in profile.files()
        if ef.name in values
    }


@st.composite
def bank_data(draw: st.DrawFn) -> CardBankData:
    """A bank's answer for a card: a Luhn-valid PAN of 12-19 digits, PSN, expiry, service code."""
    body = draw(st.from_regex(r"62[0-9]{9,16}", fullmatch=True))
    return CardBankData(
        body + ids.luhn_digit(body), draw(st.from_regex(r"[0-9]{2}", fullmatch=True)),
        draw(st.dates(date(2030, 1, 1), date(2049, 12, 31))), draw(st.sampled_from(["220", "620",
        "201"])), "demo-bank", 1,
    )  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    profile=st.sampled_from(_PROFILES),
    cards_=st.lists(st.tuples(cards, people(), applications, chip_serials, bank_data()),
                    min_size=1, max_size=4),
    issue=issue_dates,
    pin=st.from_regex(r"[0-9]{6}", fullmatch=True),
)  # fmt: skip
def test_records_of_perso_values_are_the_codec_and_plan_records_byte_for_byte(
    profile: CardProfile, cards_: list, issue: date, pin: str
) -> None:
    for card, person, app, serial, bank in cards_ * 2:  # twice: remembered encodings read back
        cic = ids.make_card_identification_code(person.region_code, serial)
        values = dataprep.perso_values(_SETTINGS, card, person, app, cic, issue, profile,
                                       bank=bank)  # fmt: skip
        data = dataprep.perso_data(_SETTINGS, card, person, app, cic, issue, pin, profile,
                                   bank=bank)  # fmt: skip
        data.validate()
        assert perso.record_values(data, profile) == values
        assert perso.from_values(values, pin) == data
        planned = _outcome(perso.plan_values, values, profile)
        # a name too long for EF06 (name and extension) is refused alike by every path
        assert planned == _outcome(_codec, values, profile)
        assert planned == _outcome(perso.plan_records, data, profile)
        if isinstance(planned, dict):
            assert list(planned) == [ef.name for _, ef in profile.files() if ef.name in values]
        assert (
            dataprep.perso_values(_SETTINGS, card, person, app, cic, issue, profile, bank=bank)
            == values
        )
        if "SFI01" in values:  # the bank's data on the chip, as the bank gave them
            fin = perso.from_values(values, pin).financial
            assert fin is not None and (fin.pan, fin.psn, fin.expiry, fin.service_code) == (
                bank.pan, bank.psn, bank.expiry, bank.service_code)  # fmt: skip
            with pytest.raises(NoBankData):  # without them: the card waits
                dataprep.perso_values(_SETTINGS, card, person, app, cic, issue, profile)


def _outcome(
    path: Callable[..., dict[str, list[bytes]]], *args: Any
) -> dict[str, list[bytes]] | str:
    """The records, or the message of the :class:`EncodingError` refusing the card."""
    try:
        return path(*args)
    except EncodingError as exc:
        return f"refused: {exc}"


@settings(max_examples=60, deadline=None)
@given(
    profile=st.sampled_from(_PROFILES),
    person=people(),
    bad=st.sampled_from(["\U0001f600", "\u20ac", "\u0e01"]),
    card=cards,
)
def test_a_value_the_chip_cannot_hold_fails_every_path_alike(
    profile: CardProfile, person, bad: str, card
) -> None:
    from dataclasses import replace

    person = replace(person, name=person.name[:3] + bad, card_name=None)  # none recorded
    cic = ids.make_card_identification_code(person.region_code, bytes(8))
    issue = date(2026, 1, 5)
    bank = CardBankData("6212260012345678903", "00", date(2036, 1, 31), "220", "demo-bank", 1)
    values = dataprep.perso_values(_SETTINGS, card, person, None, cic, issue, profile, bank=bank)
    data = dataprep.perso_data(_SETTINGS, card, person, None, cic, issue, "135792", profile,
                               bank=bank)  # fmt: skip
    errors = []
    for path in (
        lambda: perso.plan_records(data, profile),
        lambda: perso.plan_values(values, profile),
        lambda: _codec(values, profile),
    ):
        with pytest.raises(EncodingError) as err:
            path()
        errors.append(str(err.value))
    assert len(set(errors)) == 1 and "name" in errors[0]


def test_card_line_template_gives_the_bytes_of_card_line() -> None:
    files = [
        ("MF/SSSE", "EF05", 5),
        ("MF/SSSE", "EF06", 6),
        ('MF/"FIN"', "SFI01", 1),
        ("MF/社保", "EF07", 7),
    ]
    keys = [("dmk", 1), ("eak", 2), ("fin_ac", 17)]
    pins = [("ss", "MF/SSSE", 0), ("bank", "MF/FIN", 128)]
    tmpl = persofile.CardLineTemplate("ssc2-3des", "3des", files, keys, pins)
    for seq, records in enumerate(
        (
            [[b"\x01\x02", b"\xff"], [], [b"\x70\x00"], [b""]],
            [[bytes(range(40))], [b"\x00"] * 7, [], []],
        ),
        start=1,
    ):
        kmc, payloads, pin_payloads = (
            bytes([seq]) * 24,
            [bytes([seq, 9]) * 12] * 3,
            [b"\x02" * 8, b""],
        )
        line = tmpl.line(
            seq,
            item_id=7 * seq,
            card_id=42,
            chip_serial="AB12CD34EF567890",
            cic="330106D156000005AB12CD34EF567890",
            card_number="B0000001X",
            key_version=2,
            records=records,
            kmc_wrapped=kmc,
            key_payloads=payloads,
            pin_payloads=pin_payloads,
        )
        assert line == persofile.card_line(
            seq,
            item_id=7 * seq,
            card_id=42,
            chip_serial="AB12CD34EF567890",
            cic="330106D156000005AB12CD34EF567890",
            card_number="B0000001X",
            profile="ssc2-3des",
            algorithm="3des",
            key_version=2,
            files=[(df, ef, sfi, recs) for (df, ef, sfi), recs in zip(files, records, strict=True)],
            kmc_wrapped=kmc,
            keys=[(s, k, p) for (s, k), p in zip(keys, payloads, strict=True)],
            pins=[(n, df, r, p) for (n, df, r), p in zip(pins, pin_payloads, strict=True)],
        )
        assert json.loads(line)["files"][2]["df"] == 'MF/"FIN"'
    with pytest.raises(ValueError, match="template"):
        tmpl.line(
            1,
            item_id=1,
            card_id=1,
            chip_serial="00",
            cic="00",
            card_number="X",
            key_version=1,
            records=[],
            kmc_wrapped=b"",
            key_payloads=[],
            pin_payloads=[],
        )


_IDS = (
    st.text(max_size=12)
    | st.text(st.characters(min_codepoint=0x4E00, max_codepoint=0x9FA5), max_size=6)
    | st.sampled_from(['MF/"FIN"', "a\\b", "MF/SSSE"])
)
_COUNT = st.integers(0, 2**40)
_BLOBS = st.binary(max_size=40)


@settings(max_examples=150, deadline=None)
@given(
    profile=_IDS,
    algorithm=_IDS,
    files=st.lists(st.tuples(_IDS, _IDS, st.integers(0, 30)), max_size=6),
    keys=st.lists(st.tuples(_IDS, st.integers(0, 255)), max_size=12),
    pins=st.lists(st.tuples(_IDS, _IDS, st.integers(0, 255)), max_size=3),
    cards=st.lists(
        st.tuples(_COUNT, _COUNT, _COUNT, _IDS, _IDS, _IDS, _COUNT, _BLOBS, st.data()),
        min_size=1,
        max_size=3,
    ),
)
def test_card_line_template_is_card_line_and_json_byte_for_byte(
    profile: str, algorithm: str, files: list, keys: list, pins: list, cards: list
) -> None:
    """The card line template (data preparation's per-card path) against :func:`persofile.
    card_line` and ``json.dumps`` of the documented object, over random values."""
    tmpl = persofile.CardLineTemplate(profile, algorithm, files, keys, pins)
    for seq, item_id, card_id, serial, cic, number, version, kmc, data in cards:
        records = [data.draw(st.lists(_BLOBS, max_size=8)) for _ in files]
        key_payloads = [data.draw(_BLOBS) for _ in keys]
        pin_payloads = [data.draw(_BLOBS) for _ in pins]
        line = tmpl.line(
            seq,
            item_id=item_id,
            card_id=card_id,
            chip_serial=serial,
            cic=cic,
            card_number=number,
            key_version=version,
            records=records,
            kmc_wrapped=kmc,
            key_payloads=key_payloads,
            pin_payloads=pin_payloads,
        )
        assert line == persofile.card_line(
            seq,
            item_id=item_id,
            card_id=card_id,
            chip_serial=serial,
            cic=cic,
            card_number=number,
            profile=profile,
            algorithm=algorithm,
            key_version=version,
            files=[(df, ef, sfi, recs) for (df, ef, sfi), recs in zip(files, records, strict=True)],
            kmc_wrapped=kmc,
            keys=[(s, k, p) for (s, k), p in zip(keys, key_payloads, strict=True)],
            pins=[(n, df, r, p) for (n, df, r), p in zip(pins, pin_payloads, strict=True)],
        )
        expected = {
            "type": "card",
            "seq": seq,
            "item_id": item_id,
            "card_id": card_id,
            "chip_serial": serial,
            "cic": cic,
            "card_number": number,
            "profile": profile,
            "algorithm": algorithm,
            "key_version": version,
            "files": [
                {"df": df, "ef": ef, "sfi": sfi, "records": [r.hex() for r in recs]}
                for (df, ef, sfi), recs in zip(files, records, strict=True)
            ],
            "kmc": kmc.hex(),
            "keys": [
                {"slot": s, "key_id": k, "payload": p.hex()}
                for (s, k), p in zip(keys, key_payloads, strict=True)
            ],
            "pins": [
                {"name": n, "df": df, "ref": r, "payload": p.hex()}
                for (n, df, r), p in zip(pins, pin_payloads, strict=True)
            ],
        }
        assert (
            line == json.dumps(expected, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
        )


def test_a_missing_ethnicity_is_refused_by_both_paths_never_defaulted() -> None:
    from card_strategies import Card, Person

    from issuance.errors import ValidationError

    profile = dataprep.card_profile(_SETTINGS, "3des")
    person = Person("王伟", "330106197001010019", "1", None, date(1970, 1, 1), "330106")
    card = Card(6, ids.make_card_number("B0000006"))
    cic = ids.make_card_identification_code("330106", bytes(8))
    issue = date(2026, 1, 5)
    with pytest.raises(ValidationError) as general:
        dataprep.perso_data(_SETTINGS, card, person, None, cic, issue, "135792", profile)
    with pytest.raises(ValidationError) as fast:
        dataprep.perso_values(_SETTINGS, card, person, None, cic, issue, profile)
    assert [p.field for p in general.value.problems] == ["ethnicity"]
    assert str(fast.value) == str(general.value)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(profile=st.sampled_from(_PROFILES), data=st.data())
def test_card_body_template_is_card_body_byte_for_byte(profile: CardProfile, data: Any) -> None:
    """The bureau card body template (data preparation's per-card path) against
    :func:`bureau.card_body` (``json.dumps`` of the documented object), over random files,
    exported slots, records, keys and identifiers: the same bytes."""
    from cardspec.keyscheme import Algorithm, KeySlot
    from hsm.export import BureauExport
    from hsm.service import CardKeyRef
    from issuance.batches.bureau import CardBodyTemplate, card_body

    names = [ef.name for _, ef in profile.files()]
    files = data.draw(st.permutations(names).flatmap(lambda n: st.just(n[: len(n) // 2 + 1])))
    others = [spec.slot for _, spec in profile.key_specs() if spec.slot is not KeySlot.KMC]
    chosen = data.draw(st.lists(st.sampled_from(others), unique=True, max_size=len(others)))
    slots = tuple(data.draw(st.permutations([KeySlot.KMC, *chosen])))
    tmpl = CardBodyTemplate(profile, files, slots)
    pins = len(list(profile.pin_specs()))
    for _ in range(data.draw(st.integers(1, 3))):
        plan = {name: data.draw(st.lists(_BLOBS, max_size=4)) for name in files}
        export = BureauExport(
            {slot: data.draw(_BLOBS) for slot in slots},
            {slot: data.draw(_BLOBS) for slot in slots},
            tuple(data.draw(_BLOBS) for _ in range(pins)),
            data.draw(st.integers(0, 99)),
            data.draw(_BLOBS),
            data.draw(_BLOBS),
        )
        ref = CardKeyRef(data.draw(_IDS), data.draw(_COUNT), data.draw(st.sampled_from(Algorithm)))
        card = {
            "card_id": data.draw(_COUNT),
            "chip_serial": data.draw(_IDS),
            "cic": data.draw(_IDS),
            "card_number": data.draw(_IDS),
        }
        body = tmpl.body(**card, ref=ref, records=list(plan.values()), export=export)
        assert body == card_body(**card, profile=profile, ref=ref, plan=plan, export=export)
        assert json.loads(body)["keys"][0]["slot"] == KeySlot.KMC.value
    with pytest.raises(ValueError, match="template"):  # values of another shape
        tmpl.body(**card, ref=ref, records=[*plan.values(), []], export=export)


def test_a_run_freezes_the_heap_it_found_and_gives_it_back() -> None:
    """``bulkprep.heap_frozen`` (around every ``Preparer.run``): the objects alive at the start
    frozen for the run, unfrozen after it, even when it fails; a heap frozen before is left
    as it was."""
    import gc

    from issuance.batches.bulkprep import heap_frozen

    # an app built earlier in this test process froze its heap (api.app does at start-up):
    # start from none frozen, freeze it again at the end as it was
    frozen_before = gc.get_freeze_count()
    gc.unfreeze()
    try:
        assert gc.get_freeze_count() == 0
        with heap_frozen():
            assert gc.get_freeze_count() > 0
        assert gc.get_freeze_count() == 0
        with pytest.raises(RuntimeError), heap_frozen():
            raise RuntimeError("a failed run")
        assert gc.get_freeze_count() == 0
        gc.freeze()
        try:
            before = gc.get_freeze_count()
            with heap_frozen():
                pass
            assert gc.get_freeze_count() == before > 0  # the caller's freeze, untouched
        finally:
            gc.unfreeze()
    finally:
        if frozen_before:
            gc.freeze()
