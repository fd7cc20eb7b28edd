"""The CLI says what the API and the import report say: the same normaliser, the photo's
reason in the same words, a number-typed ID cell named, a card number's check character
refused before any lookup. (``ykt`` prints ``error: <exception>`` for these errors.)"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import openpyxl
import pytest
from issuance_cli_helpers import Cli
from issuance_helpers import make_cid
from typer.testing import CliRunner

from cardspec.errors import InvalidIdentifier
from issuance.errors import ValidationError
from yikatong.cli import cards as cli_cards
from yikatong.cli import db as cli_db
from yikatong.cli import people as cli_people
from yikatong.settings import get_settings

PHOTOS = Path(__file__).resolve().parents[1] / "fixtures" / "photos"
runner = CliRunner()


@pytest.fixture
def env(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("YKT_DATA_DIR", str(tmp_path))
    for var in ("YKT_STAFF", "YKT_STAFF_PASSWORD", "YKT_STAFF_PASSWORD_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(cli_db, "_prompted", {})
    get_settings.cache_clear()
    res = runner.invoke(cli_db.app, ["upgrade"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    yield tmp_path
    get_settings.cache_clear()


def test_cli_intake_words_match_the_api(env: Path) -> None:
    cli = Cli()
    cli.staff({"c1": "clerk"})
    # a padded, lower-case ID is the same record as over the API or in a file
    cid = make_cid(male=False)
    padded = f"  {cid.lower()}  "
    out = cli.ok(cli_people.app, "submit", "--id", padded, "--name", " 陶一 ",
                 "--phone", "137 0000 0071", "--ethnicity", "01",
                 "--photo", str(PHOTOS / "astronaut.jpg"),
                 "--as", "c1")  # fmt: skip
    assert "application 1 received for " + cid[:4] in out and cid not in out
    # a refused photo: the same words as the API's problems[].reason
    res = cli.invoke(cli_people.app, "submit", "--id", make_cid(), "--name", "陶二",
                     "--phone", "13700000072", "--ethnicity", "01",
                     "--photo", str(PHOTOS / "two_faces.jpg"),
                     "--as", "c1")  # fmt: skip
    assert res.exit_code != 0 and isinstance(res.exception, ValidationError)
    assert str(res.exception) == (
        "application rejected: photo: 2 faces were found: the photo must show the holder alone"
    )
    assert res.exception.problems[0].code == "several_faces"
    # a number-typed ID cell: refused naming the cell, nothing imported
    wb = openpyxl.Workbook()
    wb.active.append(["公民身份号码", "姓名", "联系电话"])
    kid = make_cid(date(2022, 3, 4))
    wb.active.append([float(kid[:17] + "0"), "陶三", "13700000073"])
    sheet = env / "numbers.xlsx"
    wb.save(sheet)
    out = cli.ok(cli_people.app, "import", str(sheet), "--collective", "Tao Ltd", "--as", "c1")
    assert "line 2" in out and "cell A2 is a number" in out.replace("\n", " ")
    assert "format the column as text" in out.replace("\n", " ")
    assert "0 accepted, 1 rejected" in out


def test_cli_card_number_check_character_before_lookup(env: Path) -> None:
    from cardspec.ids import make_card_number

    good = make_card_number("A0000001")
    wrong = good[:8] + ("0" if good[8] != "0" else "1")
    res = runner.invoke(cli_cards.app, ["show", wrong])
    assert res.exit_code != 0 and isinstance(res.exception, InvalidIdentifier)
    assert str(res.exception) == "card_number: check character does not match"
    res = runner.invoke(cli_cards.app, ["show", good.lower()])
    assert res.exit_code != 0 and f"no card {good}" in str(res.exception)  # looked up: absent


def test_verify_names_the_card_numbers_fault_before_searching(env: Path) -> None:
    """``ykt verify --card-number``: a typo is refused with its reason before any card image is
    searched (and before the API is called)."""
    import typer

    from cardspec.ids import make_card_number
    from yikatong.cli.api import card_image_for

    good = make_card_number("A0000002")
    wrong = good[:8] + ("0" if good[8] != "0" else "1")
    with pytest.raises(typer.BadParameter, match="check character does not match"):
        card_image_for(wrong, env / "no-such-dir")
    with pytest.raises(typer.BadParameter, match="characters must be 0-9 or A-Z"):
        card_image_for("A000000-1", env / "no-such-dir")
    (env / "cards").mkdir()
    with pytest.raises(typer.BadParameter, match=f"no emulated card with number {good}"):
        card_image_for(f" {good.lower()} ", env / "cards")  # trimmed, upper-cased, then searched
