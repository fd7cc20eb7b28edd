"""``ykt card`` commands."""

from __future__ import annotations

from pathlib import Path

from cardspec_helpers import SERIAL, personalised_card, software_crypto
from typer.testing import CliRunner

from cardspec.emulator import Card, LifeCycle
from cardspec.keyscheme import KeySlot
from yikatong.cli.cardspec import app

runner = CliRunner()


def test_profile_tree() -> None:
    result = runner.invoke(app, ["profile"])
    assert result.exit_code == 0, result.output
    for text in ("EF05", "EF06", "D15600000503", "A000000333010101", "uk_ident", "PIN ss"):
        assert text in result.output
    result = runner.invoke(app, ["profile", "--generation", "3"])
    assert result.exit_code == 0 and "ssc3-sm4" in result.output
    result = runner.invoke(app, ["profile", "--generation", "3", "--algorithm", "aes"])
    assert result.exit_code == 0 and "ssc3-aes" in result.output


def test_new_blank_and_read(tmp_path: Path) -> None:
    out = tmp_path / "blank.json"
    kmc = software_crypto().card_key(KeySlot.KMC).hex()
    klk = software_crypto().key_loading_key().hex()
    args = ["new-blank", str(out), "--serial", SERIAL.hex(), "--kmc", kmc, "--klk", klk]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    card = Card.load(out)
    assert card.state.life_cycle is LifeCycle.PERSONALISATION
    assert card.state.keys[KeySlot.KMC].hex() == kmc
    assert card.state.klk is not None and card.state.klk.hex() == klk
    again = runner.invoke(app, args)
    assert again.exit_code != 0  # never overwrite a card image
    half = runner.invoke(app, ["new-blank", str(tmp_path / "b2.json"), "--kmc", kmc])
    assert half.exit_code != 0 and "together" in half.output
    result = runner.invoke(app, ["read", "--image", str(out)])
    assert result.exit_code == 0, result.output
    assert "personalisation" in result.output and SERIAL.hex().upper() in result.output


def test_read_personalised_image(tmp_path: Path) -> None:
    path = tmp_path / "card.json"
    personalised_card(path)
    result = runner.invoke(app, ["read", "--image", str(path)])
    assert result.exit_code == 0, result.output
    assert "X00000019" in result.output and "张三" in result.output
    assert "1101**********002X" in result.output
    assert "11010519491231002X" not in result.output
    result = runner.invoke(app, ["read", "--image", str(path), "--full"])
    assert "11010519491231002X" in result.output
    result = runner.invoke(app, ["read"])
    assert result.exit_code != 0
