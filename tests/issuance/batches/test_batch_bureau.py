"""The bureau path: a signed bureau file from which a bureau personalises cards that verify in
the issuer's HSM, tampering refused, and the bureau's result file checked line by line.

The SoftHSM token is created here (module scope) with *known* master keys and a known bureau
transport key, both imported through the ceremony from components: the test plays the chip
maker (blank chips get their transport key KMC diversified from the known KMC master) and the
bureau (it knows the transport key components, never the issuer's master keys in use).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap_with_padding

from cardspec import cardops, ids, keyscheme
from cardspec.emulator import LifeCycle, blank_card
from cardspec.keyscheme import Algorithm, KeySlot
from cardspec.perso import CardPersoData
from cardspec.profile import (
    CardProfile,
    FinancialData,
    Holder,
    MedicalData,
    PensionData,
    get_profile,
)
from cardspec.reader import InProcessReader
from hsm import ceremony, softhsm
from hsm.errors import CryptogramMismatch
from hsm.pkcs11 import open_token
from hsm.service import CardKeyRef, Pkcs11KeyService, SoftwareKeyService
from issuance.batches.bureau import (
    BureauCardCrypto,
    BureauFileInvalid,
    BureauKeyCheckFailed,
    bureau_file_id,
    bureau_personalise,
    expected_cards,
    read_bureau_file,
    verify_bureau_file,
    write_bureau_file,
)
from issuance.batches.bureau_result import (
    RESULT_FORMAT,
    BureauResultInvalid,
    ProblemKind,
    import_bureau_result,
)
from issuance.errors import ValidationError
from printers.prepared import PreparedCard
from yikatong.settings import load_settings
from yikatong.wiring import hsm_config

pytestmark = pytest.mark.softhsm

REGION = "330100"
PIN = "135790"
BANK_PIN = "246813"
PAN, PSN = "6212260000000000018", "01"
BANK = "bureau-bank"
"""The bank key domain of the test's EMV keys."""
PROFILES = {Algorithm.DES3: "ssc2-3des", Algorithm.AES: "ssc3-aes"}


def _master(slot: KeySlot, alg: Algorithm) -> bytes:
    return hashlib.sha256(f"bureau-test:{slot.value}:{alg.value}".encode()).digest()[:16]


def _components(key: bytes) -> list[bytes]:
    first = hashlib.sha256(b"component" + key).digest()[:16]
    return [first, bytes(a ^ b for a, b in zip(key, first, strict=True))]


@dataclass
class Env:
    service: Pkcs11KeyService
    transport_key: bytes
    """The clear transport key: what the bureau rebuilds from the custodians' components."""


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    root = tmp_path_factory.mktemp("bureau-hsm")
    config = hsm_config(load_settings(environ={"YKT_DATA_DIR": str(root)}))
    assert softhsm.ensure_token(config)
    token = open_token(config)
    for alg in PROFILES:
        for slot in KeySlot:
            comps = _components(_master(slot, alg))
            kcvs = [keyscheme.kcv(c, alg) for c in comps]
            if slot.financial:  # the bank's issuer master keys, in its key domain
                ceremony.import_bank_master(token, BANK, slot, comps, kcvs, alg)
            else:
                ceremony.import_master(token, slot, comps, kcvs, alg)
    comps = _components(_klk_master())
    ceremony.import_klk_master(token, comps, [keyscheme.kcv(c, Algorithm.AES) for c in comps])
    transport = os.urandom(16)
    comps = _components(transport)
    info = ceremony.import_transport_key(
        token, "bureau-a", comps, [keyscheme.kcv(c, Algorithm.AES) for c in comps]
    )
    assert info.kcv == keyscheme.kcv(transport, Algorithm.AES) and not info.extractable
    assert ceremony.generate_signing_key(token)
    return Env(Pkcs11KeyService(token, REGION), transport)


def _cid(n: int) -> str:
    first17 = f"330106198{n % 10}0101{n % 1000:03d}"
    return first17 + ids.citizen_id_check_char(first17)


def _card(n: int, profile: CardProfile) -> PreparedCard:
    serial = hashlib.sha256(f"chip-{n}".encode()).digest()[:8]
    cic = ids.make_card_identification_code("330182", serial)
    data = CardPersoData(
        card_identification_code=cic,
        card_number=ids.make_card_number(f"B{n:07d}"),
        spec_version=profile.spec_version,
        issue_date=date(2025, 1, 1),
        expiry_date=date(2035, 1, 1),
        init_org_code="330100000001",
        holder=Holder(_cid(n), "李四", "1", "01", "330106", date(1980, 1, 1)),
        initial_pin=PIN,
        bank_pin=BANK_PIN,
        medical=MedicalData("310", "330182", "1", "11", date(2020, 1, 1)),
        pension=PensionData("1", "330182", date(2020, 1, 1), "11100"),
        financial=FinancialData(PAN, date(2035, 1, 31), PSN, "LI SI"),
    )
    return PreparedCard(
        card_id=1000 + n,
        chip_serial=serial.hex().upper(),
        perso=data,
        key_ref=CardKeyRef(cic, 1, profile.algorithm, PAN, PSN, bank=BANK),
        key_slots=tuple(s.slot for _, s in profile.key_specs() if s.slot is not KeySlot.KMC),
        profile_name=profile.name,
    )


def _cards(count: int, profile: CardProfile) -> Iterator[PreparedCard]:
    return (_card(n, profile) for n in range(1, count + 1))


def _bank_masters() -> dict[tuple[str, KeySlot, Algorithm, int], bytes]:
    return {(BANK, s, a, 1): _master(s, a) for s in KeySlot if s.financial for a in PROFILES}


def _klk_master() -> bytes:
    return hashlib.sha256(b"bureau-test:klk:aes").digest()[:16]


def _chip_klk(card: PreparedCard) -> bytes:
    """The chip maker's view: the blank chip's key-loading key from the known KLK master."""
    factor = keyscheme.card_factor(card.perso.card_identification_code)
    return keyscheme.derive_klk(_klk_master(), [factor])


def _chip_kmc(card: PreparedCard, alg: Algorithm) -> bytes:
    """The chip maker's view: the blank chip's transport key from the known KMC master."""
    factor = keyscheme.card_factor(card.perso.card_identification_code)
    return keyscheme.derive_card_key(_master(KeySlot.KMC, alg), [factor], alg)


@pytest.mark.parametrize("alg", [Algorithm.DES3, Algorithm.AES])
def test_bureau_makes_cards_that_verify_in_the_issuer_hsm(
    env: Env, tmp_path: Path, alg: Algorithm
) -> None:
    profile = get_profile(PROFILES[alg])
    cards = list(_cards(3, profile))
    path = tmp_path / "batch-7.bureau.jsonl"
    seen: list[int] = []
    info = write_bureau_file(
        path, iter(cards), env.service, "bureau-a", batch="B-7", progress=seen.append
    )
    assert (
        info.count == 3 and seen == [1, 2, 3] and not path.with_name(path.name + ".part").exists()
    )

    # nothing secret in clear: no card key, no PIN block, no PIN
    raw = path.read_bytes()
    text = raw.decode()
    twin = SoftwareKeyService(
        {(s, alg, 1): _master(s, alg) for s in KeySlot if not s.financial},
        REGION,
        klk_masters={1: _klk_master()},
        bank_masters=_bank_masters(),
    )
    for card in cards:
        soft = twin.card_crypto(card.key_ref)
        for slot in (KeySlot.KMC, *card.key_slots):
            key = soft.card_key(slot)
            assert (
                key.hex() not in raw.decode()
                and keyscheme.odd_parity(key).hex() not in raw.decode()
            )
        for _, spec in profile.pin_specs():
            assert spec.encode(PIN).hex() not in text
    assert PIN.encode() not in raw

    # the bureau: verify the issuer's signature, unwrap under its transport key, personalise
    pem = env.service.public_key_pem()
    assert verify_bureau_file(path, pem).sha256 == info.sha256
    read = list(read_bureau_file(path, pem))
    assert [c.card_id for c in read] == [c.card_id for c in cards]
    for prepared, line in zip(cards, read, strict=True):
        crypto = BureauCardCrypto(
            line, lambda wrapped: aes_key_unwrap_with_padding(env.transport_key, wrapped)
        )
        chip = blank_card(
            bytes.fromhex(prepared.chip_serial),
            _chip_kmc(prepared, alg),
            alg,
            klk=_chip_klk(prepared),
            profile=profile,
        )
        reader = InProcessReader(chip)
        result = bureau_personalise(reader, line, crypto)
        assert chip.state.life_cycle is LifeCycle.SECURED
        assert set(result.keys_loaded) == set(prepared.key_slots)
        assert result.apdu_count == chip.apdu_count

        # the issuer's side: the card made by the bureau is genuine and holds the data
        reader.connect()
        with env.service.card_crypto(prepared.key_ref) as issuer:  # gen 3: EAK opens EF06
            public = cardops.read_card_public(reader, profile, crypto=issuer, connect=False)
        assert public.card_identification == prepared.perso.card_identification()
        assert public.holder == prepared.perso.holder
        cardops.select_df(reader, profile, "SSSE")
        factor = keyscheme.card_factor(public.card_identification_code)
        random = os.urandom(8)
        answer = cardops.internal_authenticate(reader, factor, random)
        env.service.verify_internal_auth(prepared.key_ref, factor, random, answer)
        other = cards[(cards.index(prepared) + 1) % len(cards)].key_ref
        with pytest.raises(CryptogramMismatch):  # another card's keys do not verify it
            env.service.verify_internal_auth(other, factor, random, answer)
        cardops.verify_pin(reader, PIN, profile=profile)  # the encrypted initial PIN arrived
        reader.disconnect()


def test_wrong_transport_key_or_altered_key_fails_the_kcv(env: Env, tmp_path: Path) -> None:
    profile = get_profile(PROFILES[Algorithm.DES3])
    path = tmp_path / "b.jsonl"
    write_bureau_file(path, _cards(1, profile), env.service, "bureau-a")
    (line,) = read_bureau_file(path, env.service.public_key_pem())
    good = lambda w: aes_key_unwrap_with_padding(env.transport_key, w)  # noqa: E731
    BureauCardCrypto(line, good)
    wrong = os.urandom(16)
    with pytest.raises(BureauKeyCheckFailed, match="wrong transport key"):
        BureauCardCrypto(line, lambda w: aes_key_unwrap_with_padding(wrong, w))
    # a KEK that unwraps to something else than the issuer's (its KCV catches it)
    with pytest.raises(BureauKeyCheckFailed, match="KEK 1 does not match"):
        BureauCardCrypto(line, lambda w: bytes(b ^ 0x02 for b in good(w)))
    # a card key whose KCV does not match what unwraps
    kmc = line.key(KeySlot.KMC)
    other = replace(kmc, kcv=bytes(b ^ 1 for b in kmc.kcv))
    bad = replace(line, keys=(other, *(k for k in line.keys if k is not kmc)))
    with pytest.raises(BureauKeyCheckFailed, match="kmc key does not match"):
        BureauCardCrypto(bad, good)


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def test_tampered_or_incomplete_file_is_refused(env: Env, tmp_path: Path) -> None:
    profile = get_profile(PROFILES[Algorithm.DES3])
    path = tmp_path / "good.jsonl"
    info = write_bureau_file(path, _cards(4, profile), env.service, "bureau-a")
    pem = env.service.public_key_pem()
    lines = _lines(path)
    assert len(lines) == 7  # header, KEK, 4 cards, trailer
    assert json.loads(lines[1])["type"] == "kek"

    def refused(variant: list[bytes], match: str) -> None:
        bad = tmp_path / "bad.jsonl"
        bad.write_bytes(b"".join(variant))
        with pytest.raises(BureauFileInvalid, match=match):
            verify_bureau_file(bad, pem)
        with pytest.raises(BureauFileInvalid):
            next(iter(read_bureau_file(bad, pem)))  # nothing is yielded before verification

    # one record changed (a holder's name byte), the digest left as it was
    card = json.loads(lines[3])
    record = card["files"][1]["records"][1]
    card["files"][1]["records"][1] = record[:-2] + ("00" if record[-2:] != "00" else "01")
    altered = json.dumps(card, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
    refused([*lines[:3], altered, *lines[4:]], "digest")

    # ... and the digest recomputed by the forger: the signature no longer verifies
    trailer = json.loads(lines[-1])
    trailer["sha256"] = hashlib.sha256(b"".join([*lines[:3], altered, *lines[4:-1]])).hexdigest()
    forged = json.dumps(trailer).encode() + b"\n"
    refused([*lines[:3], altered, *lines[4:-1], forged], "signature")

    refused([*lines[:2], *lines[3:]], "sequence")  # a card dropped
    refused([*lines[:4], lines[3], *lines[4:]], "sequence")  # a card repeated
    refused([lines[0], *lines[2:]], "unknown KEK")  # the KEK line dropped
    refused(lines[:-1], "no trailer")  # truncated
    refused([*lines, lines[2]], "after the trailer")  # appended
    refused([*lines[:-1], lines[-1][:-1]], "truncated line")

    # a genuine file checked against another issuer key
    with pytest.raises(BureauFileInvalid, match="another key"):
        verify_bureau_file(path, SoftwareKeyService.random().public_key_pem())
    assert verify_bureau_file(path, pem).count == 4 == info.count


def test_writer_refuses_inconsistent_cards_and_leaves_no_file(env: Env, tmp_path: Path) -> None:
    profile = get_profile(PROFILES[Algorithm.DES3])
    good, other = _card(1, profile), _card(2, profile)
    mixed = replace(good, key_ref=other.key_ref)
    path = tmp_path / "x.jsonl"
    with pytest.raises(ValidationError, match="another card"):
        write_bureau_file(path, iter([good, mixed]), env.service, "bureau-a")
    assert list(tmp_path.iterdir()) == []


def _result(path: Path, file_id: str, lines: list[str]) -> Path:
    head = json.dumps({"type": "header", "format": RESULT_FORMAT, "file_id": file_id})
    path.write_text("\n".join([head, *lines]) + "\n", encoding="utf-8")
    return path


def test_result_file_every_line_checked_nothing_lost(env: Env, tmp_path: Path) -> None:
    profile = get_profile(PROFILES[Algorithm.DES3])
    cards = list(_cards(6, profile))
    bureau = tmp_path / "b.jsonl"
    write_bureau_file(bureau, iter(cards), env.service, "bureau-a")
    expected = expected_cards(bureau, env.service.public_key_pem())
    assert expected == {c.card_id: c.chip_serial for c in cards}
    file_id = bureau_file_id(bureau)
    c = [card.card_id for card in cards]
    s = [card.chip_serial for card in cards]
    made = lambda i, serial=None: json.dumps(  # noqa: E731
        {"card_id": c[i], "result": "made", "chip_serial": (serial or s[i]).lower()}
    )
    lines = [
        made(0),  # line 2
        json.dumps({"card_id": c[1], "result": "spoiled", "reason": "print head smear"}),  # 3
        "{not json",  # 4
        json.dumps({"card_id": 999999, "result": "made", "chip_serial": s[0]}),  # 5 unknown
        made(0),  # 6 duplicate
        made(2, serial="00" * 8),  # 7 wrong chip
        json.dumps({"card_id": c[3], "result": "lost"}),  # 8 malformed result
        "",  # blank line: ignored
        json.dumps({"card_id": c[4], "result": "spoiled", "reason": " "}),  # 10 no reason
        json.dumps({"card_id": c[3], "result": "spoiled", "reason": "chip dead at ATR"}),  # 11
    ]
    result = import_bureau_result(_result(tmp_path / "r.jsonl", file_id, lines), expected, file_id)
    assert [(m.card_id, m.chip_serial, m.line) for m in result.made] == [(c[0], s[0], 2)]
    assert [(x.card_id, x.reason, x.line) for x in result.spoiled] == [
        (c[1], "print head smear", 3),
        (c[3], "chip dead at ATR", 11),
    ]
    kinds = {(p.line, p.kind) for p in result.problems}
    assert kinds == {
        (4, ProblemKind.MALFORMED),
        (5, ProblemKind.UNKNOWN_CARD),
        (6, ProblemKind.DUPLICATE),
        (7, ProblemKind.SERIAL_MISMATCH),
        (8, ProblemKind.MALFORMED),
        (10, ProblemKind.MALFORMED),
    }
    # cards 3 (wrong chip), 5 (no reason) and 6 (never mentioned) are still at the bureau
    assert result.missing == (c[2], c[4], c[5])
    accounted = {m.card_id for m in result.made} | {x.card_id for x in result.spoiled}
    assert accounted | set(result.missing) == set(expected) and not result.ok

    with pytest.raises(BureauResultInvalid) as err:
        result.raise_for_problems()
    assert err.value.lines(ProblemKind.MALFORMED) == [4, 8, 10]
    assert "unknown_card on line 5" in str(err.value) and "duplicate on line 6" in str(err.value)
    assert err.value.result is result
    with pytest.raises(BureauResultInvalid):
        import_bureau_result(tmp_path / "r.jsonl", expected, file_id, strict=True)

    # a clean result passes strict mode; a result for another file is refused as a whole
    clean = [made(i) for i in range(5)] + [
        json.dumps({"card_id": c[5], "result": "spoiled", "reason": "chip cracked"})
    ]
    ok = import_bureau_result(_result(tmp_path / "ok.jsonl", file_id, clean), expected, file_id,
                              strict=True)  # fmt: skip
    assert ok.ok and len(ok.made) == 5 and len(ok.spoiled) == 1 and ok.missing == ()
    with pytest.raises(BureauFileInvalid, match="answers bureau file"):
        import_bureau_result(_result(tmp_path / "o.jsonl", "f" * 32, clean), expected, file_id)
    (tmp_path / "nohead.jsonl").write_text(clean[0] + "\n", encoding="utf-8")
    with pytest.raises(BureauFileInvalid, match="header"):
        import_bureau_result(tmp_path / "nohead.jsonl", expected, file_id)


def test_long_runs_recycle_the_hsm_module_without_losing_a_card(env: Env, tmp_path: Path) -> None:
    """SoftHSM2 frees destroyed session objects only at C_Finalize: the service re-initialises
    the module every ``recycle_after`` objects, in the middle of a file, transparently (a new
    file KEK each time)."""
    profile = get_profile(PROFILES[Algorithm.DES3])
    service = Pkcs11KeyService(env.service.token, REGION, recycle_after=25)
    before = service.token.generation
    path = tmp_path / "long.jsonl"
    info = write_bureau_file(path, _cards(7, profile), service, "bureau-a")
    assert service.token.generation >= before + 2  # after cards 3 and 6 (33 objects each)
    unwrap = lambda w: aes_key_unwrap_with_padding(env.transport_key, w)  # noqa: E731
    lines = list(read_bureau_file(path, env.service.public_key_pem()))
    assert len(lines) == info.count == 7
    assert [c.kek.kek_id for c in lines] == [1, 1, 1, 2, 2, 2, 3]  # a new KEK after each recycle
    for line in lines:
        BureauCardCrypto(line, unwrap)  # every key unwraps to the value of its KCV
    # the long-lived service (other handles of the same process) still works afterwards
    card = _card(1, profile)
    with env.service.card_crypto(card.key_ref) as crypto:
        assert crypto.kcv(KeySlot.IRK) == lines[0].key(KeySlot.IRK).kcv


def test_cli_verify_and_check_result(env: Env, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from yikatong.cli.bureau import app

    profile = get_profile(PROFILES[Algorithm.DES3])
    cards = list(_cards(2, profile))
    bureau = tmp_path / "b.jsonl"
    write_bureau_file(bureau, iter(cards), env.service, "bureau-a", batch="B-9")
    pem = tmp_path / "issuer.pem"
    pem.write_bytes(env.service.public_key_pem())
    runner = CliRunner()
    ok = runner.invoke(app, ["verify", str(bureau), "--public-key", str(pem)])
    text = " ".join(ok.output.split())  # rich wraps long lines
    assert ok.exit_code == 0 and "valid, 2 cards" in text and "B-9" in text
    tampered = tmp_path / "t.jsonl"
    tampered.write_bytes(bureau.read_bytes().replace(b'"seq":2', b'"seq":3'))
    bad = runner.invoke(app, ["verify", str(tampered), "--public-key", str(pem)])
    assert bad.exit_code == 1

    file_id = bureau_file_id(bureau)
    good = _result(tmp_path / "r.jsonl", file_id, [
        json.dumps({"card_id": cards[0].card_id, "result": "made",
                    "chip_serial": cards[0].chip_serial}),
        json.dumps({"card_id": cards[1].card_id, "result": "spoiled", "reason": "bent"}),
    ])  # fmt: skip
    res = runner.invoke(app, ["check-result", str(good), "--bureau-file", str(bureau)])
    assert res.exit_code == 0, res.output
    broken = _result(tmp_path / "x.jsonl", file_id, ["{", json.dumps({"card_id": 7})])
    res = runner.invoke(app, ["check-result", str(broken), "--bureau-file", str(bureau)])
    assert res.exit_code == 1 and "malformed" in res.output


def test_software_twin_exports_the_same_keys_as_the_hsm(env: Env) -> None:
    profile = get_profile(PROFILES[Algorithm.AES])
    card = _card(5, profile)
    slots = [KeySlot.KMC, *card.key_slots]
    pins = [spec.encode(PIN) for _, spec in profile.pin_specs()]
    twin = SoftwareKeyService(
        {(s, Algorithm.AES, 1): _master(s, Algorithm.AES) for s in KeySlot if not s.financial},
        REGION,
        {"bureau-a": env.transport_key},
        klk_masters={1: _klk_master()},
        bank_masters=_bank_masters(),
    )
    results = []
    for service in (env.service, twin):
        with service.bureau_exporter("bureau-a") as exporter:
            export = exporter.export(card.key_ref, slots, pins)
            kek = aes_key_unwrap_with_padding(
                env.transport_key, exporter.kek(export.kek_id).wrapped
            )
        keys = {s: aes_key_unwrap_with_padding(kek, w) for s, w in export.wrapped.items()}
        klk = aes_key_unwrap_with_padding(kek, export.klk_wrapped)
        assert klk == _chip_klk(card) and export.klk_kcv == keyscheme.kcv(klk, Algorithm.AES)
        results.append((keys, export.kcvs, export.encrypted))
    assert results[0] == results[1]
    assert set(results[0][0]) == set(slots) and len(results[0][2]) == 2


def test_writer_streams_one_card_at_a_time(tmp_path: Path) -> None:
    """Each card is written before the next is asked for (bounded memory at any batch size);
    the software twin writes files the same reader accepts."""
    profile = get_profile(PROFILES[Algorithm.DES3])
    twin = SoftwareKeyService(
        {(s, Algorithm.DES3, 1): _master(s, Algorithm.DES3) for s in KeySlot if not s.financial},
        REGION,
        {"bureau-a": bytes(range(16))},
        klk_masters={1: _klk_master()},
        bank_masters=_bank_masters(),
    )
    written: list[int] = []
    asked: list[tuple[int, int]] = []

    def cards() -> Iterator[PreparedCard]:
        for n in range(1, 6):
            asked.append((n, len(written)))
            yield _card(n, profile)

    path = tmp_path / "s.jsonl"
    info = write_bureau_file(path, cards(), twin, "bureau-a", progress=written.append)
    assert asked == [(n, n - 1) for n in range(1, 6)] and info.count == 5
    assert verify_bureau_file(path, twin.public_key_pem()).sha256 == info.sha256


def test_batch_prepared_in_house_goes_to_the_bureau_and_back(
    tmp_path: Path, fresh_db_url: str
) -> None:
    """The product path: a batch's data preparation (chips assigned by the blank stock), its
    bureau file exported from the database, the bureau (here the chip manufacturer, holding
    the ``manufacturer`` transport key) personalising those very chips, and its result file
    checked: every card made verifies in the issuer's HSM."""
    from batch_helpers import batch_settings, bureau_blank, hsm_root, populate

    from cardspec.emulator import Card as EmulatedCard
    from issuance.batches import dataprep
    from issuance.batches.stock import MANUFACTURER, manufacturer_key_path
    from issuance.db import make_engine, make_sessionmaker, transaction
    from issuance.models import Card
    from yikatong.cli.bureau import export_batch
    from yikatong.wiring import key_service_from_settings, runner_for

    hsm = hsm_root(tmp_path / "hsm")
    settings = batch_settings(tmp_path / "data", fresh_db_url, hsm)
    engine = make_engine(settings)
    try:
        pop = populate(engine, settings, 3)
        keys = key_service_from_settings(settings)
        with runner_for(settings, pop.batch_id, engine=engine, key_service=keys) as runner:
            assert runner.prepare_all() == 3
        path = tmp_path / "b1.bureau.jsonl"
        factory = make_sessionmaker(engine)
        info, moved, _refused = export_batch(settings, keys, pop.batch_name, path, MANUFACTURER,
                                   pop.actors["demo-operator"], factory=factory)  # fmt: skip
        assert info.count == 3 and info.batch == pop.batch_name and moved == 3
        _assert_export_events(factory, pop.batch_id, pop.actors["demo-operator"], info)

        transport = bytes.fromhex(manufacturer_key_path(settings).read_text().strip())
        unwrap = lambda w: aes_key_unwrap_with_padding(transport, w)  # noqa: E731
        lines = []
        for line in read_bureau_file(path, keys.public_key_pem()):
            chip = EmulatedCard.load(bureau_blank(settings, keys, line))
            reader = InProcessReader(chip)
            bureau_personalise(reader, line, BureauCardCrypto(line, unwrap))
            reader.connect()
            cardops.select_df(reader, get_profile(line.profile_name), "SSSE")
            factor, random = bytes.fromhex(line.card_identification_code[16:]), os.urandom(8)
            answer = cardops.internal_authenticate(reader, factor, random)
            with transaction(factory) as s:
                card = s.get(Card, line.card_id)
                assert card is not None and card.card_number == line.card_number
                ref = dataprep.key_ref(card, line.card_identification_code)
            keys.verify_internal_auth(ref, factor, random, answer)
            lines.append(line)
        result = _result(tmp_path / "r.jsonl", info.file_id, [
            json.dumps({"card_id": x.card_id, "result": "made", "chip_serial": x.chip_serial})
            for x in lines
        ])  # fmt: skip
        checked = import_bureau_result(result, expected_cards(path), info.file_id, strict=True)
        assert {m.card_id for m in checked.made} == {x.card_id for x in lines}
    finally:
        engine.dispose()


def _assert_export_events(factory: Any, batch_id: int, actor: Any, info: Any) -> None:
    """Each card's ``prepared → at_bureau`` event (written in bulk by ``mark_exported``) is what
    the one builder of an audit event makes of its full details."""
    import sqlalchemy as sa

    from issuance import audit, lifecycle
    from issuance.db import transaction
    from issuance.models import AuditEvent, BatchItem, BatchStage

    export = lifecycle.item_transition(BatchStage.PREPARED, lifecycle.ItemEvent.EXPORT)
    with transaction(factory) as s:
        items = s.scalars(sa.select(BatchItem).where(BatchItem.batch_id == batch_id)).all()
        events = {e.entity_id: e for e in s.scalars(
            sa.select(AuditEvent).where(AuditEvent.action == export.audit_event))}  # fmt: skip
        assert items and len(events) == len(items)
        for item in items:
            assert item.stage == BatchStage.AT_BUREAU and item.bureau_file_id == info.file_id
            ev = events[str(item.id)]
            assert tuple(getattr(ev, c) for c in audit.EVENT_COLUMNS) == audit.event_values(
                actor, export.audit_event, "batch_item", item.id,
                before=str(export.from_state), after=str(export.to_state),
                occurred_at=ev.occurred_at,
                details={"batch_id": item.batch_id, "card_id": item.card_id,
                         "chip_serial": item.chip_serial, "bureau_file": info.file_id,
                         "transport_key": info.transport_key},
            )  # fmt: skip


def test_a_batch_of_sm4_cards_is_refused_for_a_bureau_file(tmp_path: Path) -> None:
    """Bureau files carry card keys under AES file keys (hsm.prep.ALGORITHMS): a batch of SM4
    cards is refused before anything is prepared or written, naming the limit and the way out."""
    import sqlalchemy as sa
    from batch_helpers import populate

    from issuance import migrations
    from issuance.db import make_engine, make_sessionmaker, transaction
    from issuance.errors import ValidationError
    from issuance.models import BatchItem, BatchStage, Card, CardAlgorithm
    from yikatong.cli.bureau import export_batch
    from yikatong.demo import with_demo_bank

    env = {"YKT_DATA_DIR": str(tmp_path), "YKT_ISSUER__CARD_ALGORITHM": "sm4"}
    settings = with_demo_bank(load_settings(environ=env))
    engine = make_engine(settings)
    migrations.upgrade(engine)
    factory = make_sessionmaker(engine)
    try:
        pop = populate(engine, settings, 2)
        path = tmp_path / "sm4.bureau.jsonl"
        with pytest.raises(ValidationError, match=r"sm4 cards: a bureau file carries card keys "
                           r"under AES file keys .*ykt batch run b1"):  # fmt: skip
            export_batch(settings, SoftwareKeyService.random(), pop.batch_name, path, "bureau-a",
                         pop.actors["demo-operator"], factory=factory)  # fmt: skip
        assert not path.exists() and not list(tmp_path.glob("sm4.bureau*"))
        with transaction(factory) as s:
            rows = s.execute(
                sa.select(BatchItem.stage, Card.algorithm).join(Card, Card.id == BatchItem.card_id)
                .where(BatchItem.batch_id == pop.batch_id)
            ).all()  # fmt: skip
        assert rows and set(rows) == {(BatchStage.SELECTED, CardAlgorithm.SM4)}
    finally:
        engine.dispose()
