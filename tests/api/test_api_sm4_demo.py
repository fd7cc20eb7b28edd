"""``ykt demo --algorithm sm4`` end to end, then verified as a hospital does (issue 19).

Real processes on a data directory of their own, the HSM being the SM test module the setup
builds (``var/lib/libykt-smp11.so``, vendor table ``ibm``, SM2 signing): the demo creates the
SM4 key set, the SM4 manufacturer transport key and the issuer's SM2 key in the module,
personalises two third-generation cards on virtual readers (pcscd + vpcd + the card emulator),
prints, checks, ships and activates one. Then ``ykt serve`` and ``ykt verify --sm2`` (challenge,
INTERNAL AUTHENTICATE checked in the module, the chip's SM2 signature and card certificate
checked as the second proof). The chips themselves are read: the FCI announces ``86 01 03``
and the card certificate verifies under the issuer's SM2 key exported by ``ykt hsm
export-public-key`` and names the card's identification code.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa
from server_helpers import PROJECT, serving, ykt

from cardspec import sm2, tlv
from cardspec.cardops import read_card_public, read_certificates, select_df
from cardspec.emulator import Card as EmulatedCard
from cardspec.profile import social_security_profile
from cardspec.reader import InProcessReader
from hsm import smtoken
from issuance.db import make_engine, make_sessionmaker, transaction
from issuance.models import Card, CardAlgorithm

pytestmark = [pytest.mark.slow, pytest.mark.pcsc]

MODULE = PROJECT / "var" / "lib" / smtoken.LIBRARY_NAME


def _run(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ykt(*args), env=env, cwd=PROJECT, capture_output=True, text=True, timeout=timeout,
        check=False,
    )  # fmt: skip


def test_sm4_demo_batch_personalised_and_verified_by_the_hospital_client(tmp_path: Path) -> None:
    smtoken.build(MODULE.parent)
    data = tmp_path / "data"
    db_url = f"sqlite:///{data / 'yikatong.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("YKT_", "SOFTHSM2"))}
    env |= {
        "YKT_DATA_DIR": str(data), "YKT_DATABASE__URL": db_url,
        "YKT_HSM__MODULE": str(MODULE), "YKT_HSM__VENDOR": "ibm", "YKT_HSM__SIGNING": "sm2",
        "COLUMNS": "200", "PYTHONUNBUFFERED": "1",
    }  # fmt: skip
    env.pop("PCSCLITE_CSOCK_NAME", None)

    # without an SM table the demo refuses SM4 and says what to set
    plain = {k: v for k, v in env.items() if not k.startswith("YKT_HSM__")}
    refused = _run(plain, "demo", "--algorithm", "sm4", "--residents", "1")
    assert refused.returncode != 0
    assert "YKT_HSM__VENDOR=ibm" in refused.stdout + refused.stderr, refused.stderr[-2000:]

    demo = _run(env, "demo", "--algorithm", "sm4", "--residents", "2", "--readers", "1")
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "production: 2 good card(s)" in demo.stdout, demo.stdout[-3000:]
    hint = re.search(
        r"YKT_CLIENT_ID=(\S+) YKT_CLIENT_SECRET=(\S+) ykt verify --card-number (\S+) --sm2",
        demo.stdout,
    )
    assert hint, demo.stdout[-2000:]
    client_id, secret, number = hint.groups()

    listed = _run(env, "hsm", "list")
    assert listed.returncode == 0, listed.stderr
    for label in ("ykt:irk:sm4:v1", "ykt:klk:sm4:v1", "ykt:signing:sm2:v1",
                  "ykt:transport:manufacturer-sm4"):  # fmt: skip
        assert label in listed.stdout, listed.stdout
    exported = _run(env, "hsm", "export-public-key")
    assert exported.returncode == 0, exported.stderr
    issuer_public = sm2.public_from_pem(exported.stdout)
    assert issuer_public is not None and len(issuer_public) == 65

    engine = make_engine(url=db_url)
    with transaction(make_sessionmaker(engine)) as s:
        cards = list(s.scalars(sa.select(Card).where(Card.card_identification_code.is_not(None))))
        codes = {c.card_number: c.card_identification_code or "" for c in cards}
        assert len(cards) == 2 and {c.algorithm for c in cards} == {CardAlgorithm.SM4}
    engine.dispose()
    profile = social_security_profile(generation=3)
    for card_number, cic in codes.items():
        chip = InProcessReader(EmulatedCard.load(data / "cards" / f"{cic[16:].upper()}.json"))
        chip.connect()
        fci = select_df(chip, profile, "SSSE", fci=True)
        assert tlv.find(tlv.find(fci, 0x9F0C) or b"", 0x86) == b"\x03"
        assert bytes.fromhex("860103") in fci
        card_cert, issuer_cert = read_certificates(chip)
        cert = sm2.check_certificate(card_cert, issuer_public)
        assert cert.subject == bytes.fromhex(cic)
        sm2.check_certificate(issuer_cert, issuer_public)
        chip.disconnect()
        assert read_card_public(chip, profile).card_number == card_number

    with serving(env, tmp_path / "serve.log", workers=1) as server:
        venv = {**env, "YKT_CLIENT_ID": client_id, "YKT_CLIENT_SECRET": secret}
        both = _run(venv, "verify", "--url", server.base_url, "--card-number", number, "--sm2")
        assert both.returncode == 0, both.stdout + both.stderr
        assert both.stdout.startswith("VALID") and f"card {number}" in both.stdout
        assert "keys sm4" in both.stdout and "SM2 signature checked" in both.stdout
        plain_check = _run(venv, "verify", "--url", server.base_url, "--card-number", number)
        assert plain_check.returncode == 0 and plain_check.stdout.startswith("VALID")
        other = next(n for n in codes if n != number)  # issued, not activated: not valid
        inactive = _run(venv, "verify", "--url", server.base_url, "--card-number", other,
                        "--sm2")  # fmt: skip
        assert inactive.returncode == 1 and inactive.stdout.startswith("INVALID"), inactive.stdout
