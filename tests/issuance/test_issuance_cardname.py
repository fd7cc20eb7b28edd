"""Names outside GBK (生僻字): the substitution rule (issuance.cardname), its settings, the
intake that records it, and data preparation that writes it to the chip."""

from __future__ import annotations

import json
from datetime import date

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st
from issuance_helpers import submit

from cardspec.profile import social_security_profile
from issuance.batches import dataprep
from issuance.cardname import card_name, in_gbk
from issuance.errors import ConfigError
from issuance.models import AuditEvent, Person
from issuance.services.applications import check_name
from yikatong.settings import load_settings

RARE, RARE2 = "\U00020bb7", "\U0002a6a5"  # 𠮷, 𪚥: CJK Extension B, outside GBK


def test_rule_table_first_then_placeholder() -> None:
    assert card_name("王伟", {}, "*").substituted is False
    got = card_name(f"王{RARE}{RARE2}", {RARE: "吉"}, "*")
    assert got.text == "王吉*"
    assert got.substitutions == ((RARE, "吉"), (RARE2, "*"))
    assert got.audit_details() == {"characters": ["U+20BB7", "U+2A6A5"],
                                   "substitutes": ["吉", "*"]}  # fmt: skip


@given(st.text(alphabet=st.characters(min_codepoint=0x3400, max_codepoint=0x2A6DF), max_size=12))
def test_rule_always_gives_gbk_of_the_same_length(name: str) -> None:
    got = card_name(name, {RARE: "吉"}, "*")
    assert in_gbk(got.text) and len(got.text) == len(name)
    assert [c for c, _ in got.substitutions] == [c for c in name if not in_gbk(c)]


def test_settings_refuse_a_bad_rule(tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {"YKT_DATA_DIR": str(tmp_path)}
    ok = load_settings(environ={**env, "YKT_ISSUER__GBK_PLACEHOLDER": "?"})
    assert ok.issuer.gbk_placeholder == "?"
    for key, value in (("GBK_PLACEHOLDER", RARE), ("GBK_PLACEHOLDER", "**"),
                       ("GBK_SUBSTITUTES", json.dumps({"吉": "*"})),
                       ("GBK_SUBSTITUTES", json.dumps({RARE: RARE2})),
                       ("GBK_SUBSTITUTES", json.dumps({RARE: "吉吉"}))):  # fmt: skip
        with pytest.raises(ConfigError, match=f"issuer.{key.lower()}"):
            load_settings(environ={**env, f"YKT_ISSUER__{key}": value})


def test_check_name_counts_the_chip_name() -> None:
    assert check_name(f"王{RARE}") is None
    assert check_name("王\U0001f600") is not None  # not a name character at all
    long = "欧阳" + RARE * 18  # 20 characters, 40 bytes on the chip: fits
    assert check_name(long) is None


def test_intake_records_the_substitution_and_dataprep_writes_it(session, settings, actors):  # type: ignore[no-untyped-def]
    app = submit(session, settings, actors["clerk"], name=f"王{RARE}")
    person = session.get(Person, app.person_id)
    assert person.name == f"王{RARE}" and person.card_name == "王*"
    event = session.scalars(
        sa.select(AuditEvent).where(AuditEvent.action == "person.card_name_substituted")
    ).one()
    assert json.loads(event.details) == {"application_id": app.id, "characters": ["U+20BB7"],
                                         "substitutes": ["*"]}  # fmt: skip
    plain = submit(session, settings, actors["clerk"], name="王伟")
    assert session.get(Person, plain.person_id).card_name is None

    profile = social_security_profile(financial=False)  # the name only: no bank data needed

    class CardRow:
        id, card_number = 1, "A00000019"

    values = dataprep.perso_values(settings, CardRow(), person, None,
                                   "330100D156000005" + "00" * 8, date(2026, 1, 1),
                                   profile)  # fmt: skip
    assert values["EF06"]["name"] == "王*"
