"""The counter's desk from the CLI, as a clerk runs it (a real ``ykt`` process, SoftHSM, the
virtual desk reader behind pcscd + vpcd, the file spool): a rare-character name received,
its temporary card personalised and printed with ``ykt cards temporary --chip``, the person
view showing the true name and the chip's substitute, and ``ykt cards hand-back --chip``
blocking the returned chip and refunding the deposit with a receipt."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from batch_helpers import HsmRoot, batch_settings, hsm_root, populate
from cli_helpers import ykt, ykt_env
from sqlalchemy.engine import Engine

from cardspec.ids import citizen_id_check_char
from issuance.db import make_engine
from yikatong.settings import Settings

pytestmark = [pytest.mark.pcsc, pytest.mark.softhsm, pytest.mark.slow]

PHOTO = Path(__file__).resolve().parents[3] / "issuance" / "sample_data" / "photos"


@pytest.fixture(scope="session")
def desk_hsm(tmp_path_factory: pytest.TempPathFactory) -> HsmRoot:
    return hsm_root(tmp_path_factory.mktemp("desk-hsm"))


@pytest.fixture
def env(tmp_path: Path, fresh_db_url: str, desk_hsm: HsmRoot) -> Iterator[tuple[Settings, Engine]]:
    settings = batch_settings(tmp_path / "data", fresh_db_url, desk_hsm)
    engine = make_engine(settings)
    yield settings, engine
    engine.dispose()


def test_clerk_makes_and_takes_back_a_temporary_chip(
    env: tuple[Settings, Engine], desk_hsm: HsmRoot
) -> None:
    settings, engine = env
    populate(engine, settings, 1)
    cli = ykt_env(settings, desk_hsm)
    body = "33010619900315123"
    cid = body + citizen_id_check_char(body)
    photo = next(PHOTO.glob("resident-01.*"))
    got = ykt(cli, "app", "submit", "--id", cid, "--name", "王\U00020bb7",
              "--phone", "13800138000", "--photo", str(photo), "--ethnicity", "01",
              "--as", "demo-clerk")  # fmt: skip
    assert got.returncode == 0, got.stdout + got.stderr

    made = ykt(cli, "cards", "temporary", "--id", cid, "--chip", "--as", "demo-clerk")
    assert made.returncode == 0, made.stdout + made.stderr
    assert "personalised (temporary, medical only); face printed" in made.stdout
    assert "deposit taken: 5.00 yuan" in made.stdout and "receipt" in made.stdout
    number = made.stdout.split("temporary card ")[1].split()[0]
    spooled = list((settings.spool_dir).glob(f"*{number}*"))
    assert {p.name.split(".", 1)[1] for p in spooled} >= {"front.png", "back.png"}

    shown = ykt(cli, "people", "show", "--id", cid, "--as", "demo-clerk")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "王\U00020bb7" in shown.stdout
    assert "name on the chip (GBK): 王*; substituted: \U00020bb7 (U+20BB7) -> *" in shown.stdout
    assert f"{number} temporary active" in shown.stdout

    back = ykt(cli, "cards", "hand-back", number, "--chip", "--as", "demo-clerk")
    assert back.returncode == 0, back.stdout + back.stderr
    assert f"chip of temporary card {number} blocked" in back.stdout
    assert "deposit refunded: 5.00 yuan" in back.stdout and "refund" in back.stdout
    # the spooled job is temporary-<card number>-<chip serial>: that chip's image is blocked
    serial = spooled[0].name.split(".")[0].rsplit("-", 1)[1]
    image = json.loads((settings.cards_dir / f"{serial}.json").read_text())
    assert image["blocked_apps"] == ["MF/SSSE"]
