"""``ykt people``: find a resident (by ID number, card number, phone, or name with birth date or
region) and see their whole record. The rules are in :mod:`issuance.services.people`."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from yikatong.cli.db import AS_HELP, ID_FILE_HELP, acting, read_citizen_id, session_scope, settings

if TYPE_CHECKING:
    from issuance.services.people import PersonQuery, PersonRecord

app = typer.Typer(no_args_is_help=True)
out = Console(markup=False, highlight=False)  # names and addresses are printed as typed

_ID_HELP = "Full citizen ID number (better: --id-file, so it stays out of the shell history)."


def _query(
    citizen_id: str | None,
    id_file: Path | None,
    card: str | None,
    phone: str | None,
    name: str | None,
    birth_date: datetime | None,
    region: str | None,
) -> PersonQuery:
    from issuance.services.people import PersonQuery

    cid = read_citizen_id(citizen_id, id_file) if (citizen_id or id_file) else None
    return PersonQuery(
        citizen_id=cid,
        card_number=card,
        phone=phone,
        name=name,
        birth_date=birth_date.date() if birth_date else None,
        region_code=region,
    )


_DATE = typer.Option(None, "--birth-date", formats=["%Y-%m-%d"], help="YYYY-MM-DD (with --name)")


@app.command("find")
def find(
    citizen_id: str | None = typer.Option(None, "--id", help=_ID_HELP),
    id_file: Path | None = typer.Option(None, "--id-file", help=ID_FILE_HELP),
    card: str | None = typer.Option(None, "--card", help="card number (9 characters)"),
    phone: str | None = typer.Option(None, "--phone"),
    name: str | None = typer.Option(None, "--name", help="with --birth-date and/or --region"),
    birth_date: datetime | None = _DATE,
    region: str | None = typer.Option(None, "--region", help="6-digit region code (with --name)"),
    as_: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:
    """Find residents (ID numbers masked; at most 50). Audited."""
    from issuance import display
    from issuance.services import people

    q = _query(citizen_id, id_file, card, phone, name, birth_date, region)
    with session_scope() as s:
        matches = people.find_people(s, q, acting(s, as_))
    if not matches:
        out.print("nobody found")
        return
    # fits 80 columns: no borders, the region left out (it is in the ID number's first digits)
    table = Table("person", "name", "citizen id", "born", "card", "status", box=None)
    for m in matches:
        table.add_row(
            str(m.person_id),
            m.name,
            m.citizen_id_masked,
            display.day(m.birth_date),
            display.text(m.card_number),
            display.text(m.card_status),
        )
    out.print(table)
    if len(matches) == 1:
        out.print(f"next: ykt people show --person {matches[0].person_id}")


@app.command("show")
def show(
    person: int | None = typer.Option(None, "--person", help="person id (from ykt people find)"),
    citizen_id: str | None = typer.Option(None, "--id", help=_ID_HELP),
    id_file: Path | None = typer.Option(None, "--id-file", help=ID_FILE_HELP),
    card: str | None = typer.Option(None, "--card", help="card number (9 characters)"),
    phone: str | None = typer.Option(None, "--phone"),
    name: str | None = typer.Option(None, "--name", help="with --birth-date and/or --region"),
    birth_date: datetime | None = _DATE,
    region: str | None = typer.Option(None, "--region", help="6-digit region code (with --name)"),
    as_: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:
    """A resident's whole record: identity, cards and their chip applications, PIN state,
    deposits and fees, loss reports, temporary cards, applications, audit timeline. Audited."""
    from issuance.services import people

    with session_scope() as s:
        actor = acting(s, as_)
        if person is None:
            q = _query(citizen_id, id_file, card, phone, name, birth_date, region)
            person = people.find_one(s, q, actor)
        rec = people.person_record(s, person, actor)
    print_record(rec)


def print_record(rec: PersonRecord) -> None:
    """The person view as text (times in the issuer's zone, money in yuan, no None)."""
    from issuance import display

    cfg = settings()

    def t(v: datetime | None) -> str:
        return display.local_time(v, cfg)

    def d(v: date | None) -> str:
        return display.day(v)

    sex = {"1": "male", "2": "female", "9": "unstated"}.get(rec.sex, rec.sex)
    out.print(
        f"person {rec.person_id}: {rec.name} {rec.citizen_id_masked} ({sex}, born "
        f"{d(rec.birth_date)})"
    )
    out.print(
        f"  ethnicity {display.text(rec.ethnicity)}; region {rec.region_code}; "
        f"phone {display.text(rec.phone)}"
    )
    out.print(f"  address {display.text(rec.address)}")
    if rec.card_name:
        subs = ", ".join(
            f"{t} (U+{ord(t):04X}) -> {c}"
            for t, c in zip(rec.name, rec.card_name, strict=False) if t != c
        )  # fmt: skip
        out.print(f"  name on the chip (GBK): {rec.card_name}; substituted: {subs}")
    if rec.death_date:
        out.print(f"  died {d(rec.death_date)}")
    out.print("cards:" if rec.cards else "cards: none")
    for c in rec.cards:
        extra = f"; replaced by {c.replaced_by}" if c.replaced_by else ""
        out.print(
            f"  {c.card_number} {c.kind} {c.status} since {t(c.status_changed_at)}; "
            f"{display.validity(c.issue_date, c.expiry_date)}{extra}"
        )
        for a in c.chip_apps:
            if a.pin_blocked:  # never "sealed" or "active" when its PIN is blocked
                out.print(f"    {a.kind:16} PIN blocked")
                continue
            pin = ""
            if a.pin_set is not None:
                pin = "; PIN set" if a.pin_set else "; PIN not set"
            if a.pin_tries_left is not None:
                pin += f"; PIN: {a.pin_tries_left} tries left"
            out.print(f"    {a.kind:16} {a.status}{pin}")
    out.print(
        f"deposits (held {display.yuan(rec.deposits_held_fen)}):"
        if rec.deposits
        else "deposits: none"
    )
    for dep in rec.deposits:
        state = f"refunded {t(dep.refunded_at)}" if dep.refunded_at else "held"
        out.print(
            f"  {dep.card_number} {display.yuan(dep.amount_fen)} taken {t(dep.taken_at)}; {state}"
        )
    out.print(f"fees (total {display.yuan(rec.fees_fen)}):" if rec.fees else "fees: none")
    for f in rec.fees:
        out.print(f"  {f.what} {display.yuan(f.amount_fen)} at {t(f.at)}")
    out.print("loss reports:" if rec.losses else "loss reports: none")
    for r in rec.losses:
        lapse = f"; lapses {t(r.lapses_at)}" if r.lapses_at else ""
        closed = f"; closed {t(r.closed_at)}" if r.closed_at else ""
        out.print(
            f"  {r.card_number} {r.kind} {r.status} via {r.channel} at "
            f"{t(r.reported_at)}{lapse}{closed}"
        )
    out.print("applications:" if rec.applications else "applications: none")
    for a2 in rec.applications:
        decided = f"; decided {t(a2.decided_at)}" if a2.decided_at else ""
        why = f" ({a2.reject_reason})" if a2.reject_reason else ""
        card = f"; card {a2.card_number}" if a2.card_number else ""
        out.print(
            f"  {a2.application_id} {a2.status}{why} via {a2.channel}, received "
            f"{t(a2.received_at)}{decided}{card}"
        )
    out.print("timeline:" if rec.timeline else "timeline: empty")
    for e in rec.timeline:
        change = f" {e.before or ''}→{e.after}" if e.after else ""
        why = f" ({e.reason})" if e.reason else ""
        out.print(
            f"  {t(e.occurred_at)} {e.action} {e.entity_type} {e.entity_id}{change}{why} "
            f"by {e.actor} ({e.channel})"
        )
