"""The bureau path end to end, as operators run it: ``ykt batch prepare``, ``ykt bureau
export`` (cards go ``at_bureau``: a later ``ykt batch run`` leaves them alone), the bureau
personalises the chips from the signed file with its transport key (the reference bureau of
:mod:`issuance.batches.bureau`), ``ykt bureau import`` of its result applies it (made → good,
spoiled → requeued), idempotently; the requeued card is made in house, then everything ships.
Real SoftHSM, emulated chips, pcscd + vpcd for the in-house card; SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from batch_helpers import (
    HsmRoot,
    assert_batch_invariants,
    batch_settings,
    bureau_blank,
    hsm_root,
    populate,
)
from cli_helpers import ykt, ykt_env
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap_with_padding
from sqlalchemy.engine import Engine

from cardspec.emulator import Card as EmulatedCard
from cardspec.emulator import LifeCycle
from cardspec.reader import InProcessReader
from hsm import ceremony
from hsm.pkcs11 import open_token
from issuance.batches.bureau import BureauCardCrypto, bureau_personalise, read_bureau_file
from issuance.batches.bureau_result import RESULT_FORMAT
from issuance.db import make_engine, make_sessionmaker, transaction
from issuance.models import (
    AuditEvent,
    BatchItem,
    BatchStage,
    BlankChip,
    Card,
    CardStatus,
    ChipStatus,
)
from yikatong.demo import BRANCH_CODE
from yikatong.settings import Settings, load_settings
from yikatong.wiring import hsm_config, key_service_from_settings

pytestmark = [pytest.mark.pcsc, pytest.mark.softhsm]


@pytest.fixture(scope="module")
def bureau_hsm(tmp_path_factory: pytest.TempPathFactory) -> tuple[HsmRoot, bytes]:
    """The issuer's token, with a transport key agreed with the bureau (its clear value is
    what the bureau's custodians rebuild from their components)."""
    root = hsm_root(tmp_path_factory.mktemp("bureau-rt-hsm"))
    token = open_token(hsm_config(load_settings(environ={
        "YKT_DATA_DIR": str(root.root), **root.environ()})))  # fmt: skip
    _, parts = ceremony.generate_transport_key(token, "bureau-rt", 2)
    key = bytes(a ^ b for a, b in zip(parts[0][0], parts[1][0], strict=True))
    return root, key


@pytest.fixture
def env(
    tmp_path: Path, fresh_db_url: str, bureau_hsm: tuple[HsmRoot, bytes]
) -> Iterator[tuple[Settings, Engine]]:
    settings = batch_settings(tmp_path / "data", fresh_db_url, bureau_hsm[0])
    engine = make_engine(settings)
    yield settings, engine
    engine.dispose()


def _stages(engine: Engine, batch_id: int) -> dict[int, BatchStage]:
    with transaction(make_sessionmaker(engine)) as s:
        return {i.card_id: BatchStage(i.stage) for i in s.scalars(
            sa.select(BatchItem).where(BatchItem.batch_id == batch_id))}  # fmt: skip


def test_bureau_round_trip_down_to_card_states(
    env: tuple[Settings, Engine], bureau_hsm: tuple[HsmRoot, bytes], tmp_path: Path
) -> None:
    settings, engine = env
    hsm, transport_key = bureau_hsm
    pop = populate(engine, settings, 4, name="bur")
    shell = ykt_env(settings, hsm, YKT_STAFF="demo-operator")

    done = ykt(shell, "batch", "prepare", "bur")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 card(s) prepared now" in done.stdout
    assert set(_stages(engine, pop.batch_id).values()) == {BatchStage.PREPARED}

    bureau_file = tmp_path / "bur.bureau.jsonl"
    done = ykt(shell, "bureau", "export", "bur", "--transport", "bureau-rt", "-o", str(bureau_file))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 card(s) now at the bureau" in done.stdout
    assert set(_stages(engine, pop.batch_id).values()) == {BatchStage.AT_BUREAU}
    # the issuer hands over its public key; the bureau verifies the file with it
    pem = tmp_path / "issuer.pem"
    assert ykt(shell, "hsm", "export-public-key", "-o", str(pem)).returncode == 0
    done = ykt(shell, "bureau", "verify", str(bureau_file), "--public-key", str(pem))
    assert done.returncode == 0 and "valid, 4 cards" in done.stdout, done.stderr

    # a run now makes nothing: the cards are at the bureau (exit 1, says so)
    done = ykt(shell, "batch", "run", "bur", "--readers", "1")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "4 card(s) at the bureau" in done.stdout
    assert set(_stages(engine, pop.batch_id).values()) == {BatchStage.AT_BUREAU}

    # the bureau: personalises three chips from the file, spoils the fourth
    lines = list(read_bureau_file(bureau_file, pem.read_bytes()))
    keys = key_service_from_settings(settings)
    results: list[dict[str, object]] = []
    for n, line in enumerate(lines):
        if n == 3:
            results.append({"card_id": line.card_id, "result": "spoiled",
                            "reason": "chip cracked in the embosser"})  # fmt: skip
            continue
        chip = EmulatedCard.load(bureau_blank(settings, keys, line))
        crypto = BureauCardCrypto(line, lambda w: aes_key_unwrap_with_padding(transport_key, w))
        bureau_personalise(InProcessReader(chip), line, crypto)
        assert chip.state.life_cycle is LifeCycle.SECURED
        results.append({"card_id": line.card_id, "result": "made",
                        "chip_serial": line.chip_serial})  # fmt: skip
    file_id = json.loads(bureau_file.read_text().splitlines()[0])["file_id"]
    result_file = tmp_path / "bur.result.jsonl"
    header = {"type": "header", "format": RESULT_FORMAT, "file_id": file_id}
    result_file.write_text("\n".join(json.dumps(o) for o in (header, *results)) + "\n")

    done = ykt(shell, "bureau", "import", str(result_file), "--bureau-file", str(bureau_file))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 card(s) made (checked), 1 spoiled at the bureau" in done.stdout
    stages = _stages(engine, pop.batch_id)
    spoiled_card = lines[3].card_id
    assert [stages[c.card_id] for c in lines[:3]] == [BatchStage.CHECKED] * 3
    assert stages[spoiled_card] == BatchStage.SELECTED
    with transaction(make_sessionmaker(engine)) as s:
        made = s.scalars(sa.select(Card).where(Card.id.in_([c.card_id for c in lines[:3]])))
        assert {c.status for c in made} == {CardStatus.PERSONALISED}
        chip = s.scalars(sa.select(BlankChip).where(
            BlankChip.chip_serial == lines[3].chip_serial)).one()  # fmt: skip
        assert chip.status == ChipStatus.SPOILED and "chip cracked" in (chip.reason or "")
        events = s.scalar(sa.select(sa.func.count()).select_from(AuditEvent))

    # idempotent: the same result again changes nothing
    done = ykt(shell, "bureau", "import", str(result_file), "--bureau-file", str(bureau_file))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 card(s) made" in done.stdout and "4 already applied" in done.stdout
    assert _stages(engine, pop.batch_id) == stages
    with transaction(make_sessionmaker(engine)) as s:  # only the import's own audit event
        assert s.scalar(sa.select(sa.func.count()).select_from(AuditEvent)) == (events or 0) + 1

    # the requeued card is made in house on a fresh blank, then the batch ships
    done = ykt(shell, "batch", "run", "bur", "--readers", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 good card(s) this run" in done.stdout
    done = ykt(shell, "batch", "ship", "bur", "--to", BRANCH_CODE)
    assert done.returncode == 0 and "4 card(s) shipped" in done.stdout, done.stderr
    with transaction(make_sessionmaker(engine)) as s:
        counts = assert_batch_invariants(s, settings, pop.batch_id, pop.card_numbers)
        assert counts["good"] == 4 and counts["spoiled"] == 1 and counts["assigned"] == 0
        statuses = set(s.scalars(sa.select(Card.status).where(Card.batch_id == pop.batch_id)))
        assert statuses == {CardStatus.SHIPPED}


def test_bureau_result_with_bad_lines_applies_nothing(
    env: tuple[Settings, Engine], bureau_hsm: tuple[HsmRoot, bytes], tmp_path: Path
) -> None:
    settings, engine = env
    hsm, _ = bureau_hsm
    pop = populate(engine, settings, 2, name="bur2")
    shell = ykt_env(settings, hsm, YKT_STAFF="demo-operator")
    assert ykt(shell, "batch", "prepare", "bur2").returncode == 0
    bureau_file = tmp_path / "bur2.jsonl"
    assert ykt(shell, "bureau", "export", "bur2", "--transport", "bureau-rt",
               "-o", str(bureau_file)).returncode == 0  # fmt: skip
    header = json.loads(bureau_file.read_text().splitlines()[0])
    card_ids = sorted(_stages(engine, pop.batch_id))
    result_file = tmp_path / "bad.result.jsonl"
    result_file.write_text("\n".join([
        json.dumps({"type": "header", "format": RESULT_FORMAT, "file_id": header["file_id"]}),
        json.dumps({"card_id": card_ids[0], "result": "made", "chip_serial": "00" * 8}),
        "not json",
    ]) + "\n")  # fmt: skip
    done = ykt(shell, "bureau", "import", str(result_file), "--bureau-file", str(bureau_file))
    assert done.returncode == 1
    assert "serial_mismatch" in done.stdout and "nothing applied" in done.stderr
    assert set(_stages(engine, pop.batch_id).values()) == {BatchStage.AT_BUREAU}
