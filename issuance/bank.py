"""The bank's data: the data-exchange files with a co-operating bank.

Design notes: ``docs/design/issuance.md`` (section ``issuance.bank``).
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cardspec.errors import InvalidIdentifier
from cardspec.ids import luhn_ok, mask_citizen_id, mask_pan, validate_card_number
from cardspec.keyscheme import Algorithm
from hsm.ports import CardKeyRef
from issuance import audit
from issuance.audit import Actor
from issuance.errors import ConfigError, FieldProblem, PermissionDenied, ValidationError
from issuance.models import (
    TERMINAL_CARD_STATUSES,
    Agency,
    AgencyKind,
    BankAccount,
    Card,
    CardKind,
    CardStatus,
    ChipAppKind,
    ChipApplication,
    ChipAppStatus,
    Person,
    StaffRole,
    utcnow,
)
from issuance.settings import BankSettings, IssuanceConfig

FORMAT = "YKTBANK"
VERSION = "1"
SEP = "|"
#: Who exchanges files with a bank: production staff (as for batches).
BANK_FILE_STAFF = {StaffRole.CLERK, StaffRole.SUPERVISOR, StaffRole.ADMIN, StaffRole.SYSTEM}
#: Cards a request may ask an account for: not yet personalised.
_REQUESTABLE = (CardStatus.NUMBER_ALLOCATED, CardStatus.IN_PRODUCTION)
_ACCOUNT_REF = re.compile(r"[0-9A-Za-z][0-9A-Za-z._/-]{0,31}")
_REQUEST_ID = re.compile(r"YKTB-[0-9A-Za-z-]{1,32}-\d{8}T\d{6}Z")
#: The reason of a hotlist line (``X``) for a card replaced by another.
HOTLIST_REPLACED = "REPLACED"


class BankFileInvalid(ValidationError):
    """A response file refused as a whole (header, trailer), or lines of it refused."""


def bank_of(settings: IssuanceConfig, session: Session, code: str) -> tuple[Agency, BankSettings]:
    """The bank agency ``code`` and its ``[banks.<code>]`` settings; ConfigError if either is
    missing."""
    conf = settings.banks.get(code)
    if conf is None:
        raise ConfigError(f"no [banks.{code}] settings (its BINs and HSM key domain)")
    agency = session.scalars(sa.select(Agency).where(Agency.code == code)).one_or_none()
    if agency is None or agency.kind != AgencyKind.BANK:
        raise ConfigError(f"no bank agency {code!r}")
    return agency, conf


def _clean(value: str) -> str:
    """A field as written to a file: no separator, no line break."""
    return value.replace(SEP, " ").replace("\r", " ").replace("\n", " ")


# --- request file ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestFile:
    request_id: str
    text: str
    card_ids: tuple[int, ...]
    """The cards asked an account (``D`` lines) or asked to keep their replaced card's (``R``)."""
    replacements: tuple[int, ...] = ()
    """Those of ``card_ids`` asked as replacements (``R`` lines)."""
    hotlisted: tuple[int, ...] = ()
    """The replaced cards whose financial application the file reports (``X`` lines)."""


def card_replaced(session: Session, old: Card, new: Card, actor: Actor) -> None:
    """``old`` was replaced by ``new`` (:func:`issuance.services.replace_card`): the
    replacement keeps the holder's bank. ``new``'s financial application is bound to ``old``'s
    bank (``chip.bank_bound``); if the bank opened an account for ``old``, its financial
    application goes on the bank's hotlist in the next request file (``bank.hotlist_due``) and
    ``new`` is asked there as a replacement bound to that account (an ``R`` line, not a new
    account). Nothing when ``old`` had no bank."""
    old_fin, new_fin = old.chip_app(ChipAppKind.FINANCIAL), new.chip_app(ChipAppKind.FINANCIAL)
    if old_fin is None or old_fin.bank_agency_id is None:
        return
    bank = session.get(Agency, old_fin.bank_agency_id)
    assert bank is not None
    if new_fin is not None and new_fin.bank_agency_id is None:
        new_fin.bank_agency_id = bank.id
        details = {"card_id": new.id, "bank": bank.code, "by": f"replaces card {old.card_number}"}
        audit.record(session, actor, "chip.bank_bound", "chip_application", new_fin.id,
                     after=str(bank.id), details=details)  # fmt: skip
    account = session.scalars(
        sa.select(BankAccount).where(BankAccount.card_id == old.id)
    ).one_or_none()
    if account is None or account.pan is None or account.hotlist_due_at is not None:
        return
    account.hotlist_due_at = utcnow()
    audit.record(session, actor, "bank.hotlist_due", "card", old.id,
                 details={"bank": bank.code, "pan": mask_pan(account.pan), "psn": account.psn,
                          "account_ref": account.account_ref,
                          "replaced_by": new.card_number})  # fmt: skip


def _replaced_accounts(
    session: Session, bank_id: int, card_ids: Sequence[int]
) -> dict[int, tuple[Card, BankAccount]]:
    """For each of ``card_ids`` that replaces a card with an account opened at ``bank_id``:
    the replaced card and that account (one query)."""
    if not card_ids:
        return {}
    rows = session.execute(
        sa.select(Card, BankAccount)
        .join(BankAccount, BankAccount.card_id == Card.id)
        .where(Card.replaced_by_id.in_(list(card_ids)), BankAccount.bank_agency_id == bank_id,
               BankAccount.pan.is_not(None))
    ).all()  # fmt: skip
    return {old.replaced_by_id: (old, acc) for old, acc in rows if old.replaced_by_id}


def request_file(
    session: Session,
    settings: IssuanceConfig,
    bank_code: str,
    actor: Actor,
    *,
    limit: int | None = None,
    now: datetime | None = None,
) -> RequestFile:
    """Ask ``bank_code`` to open accounts for the cards that need one: formal cards not yet
    personalised, financial application sealed and bound to this bank or to none (bound now,
    ``chip.bank_bound``), never asked before: a ``D`` line each, or an ``R`` line for a card
    replacing one whose account the bank opened (the bank keeps that account,
    :func:`card_replaced`). The replaced cards not yet reported go on the bank's hotlist
    (``X`` lines). Records a waiting :class:`BankAccount` per card and one audit event
    ``bank.accounts_requested``; ValidationError when there is nothing to ask or report."""
    if actor.role not in BANK_FILE_STAFF:
        raise PermissionDenied(f"role {actor.role} may not exchange files with a bank")
    bank, conf = bank_of(settings, session, bank_code)
    now = now or datetime.now(UTC)
    request_id = f"YKTB-{bank_code}-{now:%Y%m%dT%H%M%SZ}"
    if not _REQUEST_ID.fullmatch(request_id):
        raise ConfigError(f"bank code {bank_code!r}: letters, digits and '-' only in a file")
    asked = sa.select(BankAccount.card_id)
    stmt = (
        sa.select(Card, ChipApplication, Person)
        .join(ChipApplication, ChipApplication.card_id == Card.id)
        .join(Person, Person.id == Card.person_id)
        .where(
            Card.kind == CardKind.FORMAL,
            Card.status.in_(_REQUESTABLE),
            ChipApplication.kind == ChipAppKind.FINANCIAL,
            ChipApplication.status == ChipAppStatus.SEALED,
            sa.or_(ChipApplication.bank_agency_id.is_(None),
                   ChipApplication.bank_agency_id == bank.id),
            Card.id.not_in(asked),
        )
        .order_by(Card.id)
    )  # fmt: skip
    if limit:
        stmt = stmt.limit(limit)
    rows = session.execute(stmt).all()
    hotlist = session.execute(
        sa.select(Card, BankAccount)
        .join(BankAccount, BankAccount.card_id == Card.id)
        .where(BankAccount.bank_agency_id == bank.id, BankAccount.hotlist_due_at.is_not(None),
               BankAccount.hotlist_request_id.is_(None))
        .order_by(BankAccount.id)
    ).all()  # fmt: skip
    if not rows and not hotlist:
        raise ValidationError(
            "no card needs a bank account",
            [FieldProblem("bank", f"no card waits for an account at {bank_code}")],
        )
    replaced = _replaced_accounts(session, bank.id, [card.id for card, _, _ in rows])
    count = len(rows) + len(hotlist)
    lines = [SEP.join(["H", FORMAT, VERSION, "REQ", request_id, bank_code,
                       f"{now:%Y-%m-%dT%H:%M:%SZ}", str(count)])]  # fmt: skip
    for n, (card, fin, person) in enumerate(rows, start=1):
        if fin.bank_agency_id is None:
            fin.bank_agency_id = bank.id
            audit.record(session, actor, "chip.bank_bound", "chip_application", fin.id,
                         after=str(bank.id), details={"card_id": card.id, "bank": bank_code,
                                                      "by": "bank request file"})  # fmt: skip
        id_number = (
            person.citizen_id if conf.id_number == "full" else mask_citizen_id(person.citizen_id)
        )
        fields = ["D", str(n), card.card_number, _clean(person.name), id_number, card.region_code]
        old = replaced.get(card.id)
        if old is not None:  # a replacement: the bank keeps the holder's account
            old_card, old_acc = old
            assert old_acc.pan is not None and old_acc.account_ref is not None
            fields[0] = "R"
            fields += [old_card.card_number, mask_pan(old_acc.pan), old_acc.psn or "",
                       old_acc.account_ref]  # fmt: skip
        lines.append(SEP.join(fields))
        session.add(BankAccount(card_id=card.id, bank_agency_id=bank.id, request_id=request_id,
                                requested_at=utcnow(), key_version=conf.key_version,
                                replaces_account_id=old and old[1].id))  # fmt: skip
    for n, (old_card, acc) in enumerate(hotlist, start=len(rows) + 1):
        assert acc.pan is not None and acc.account_ref is not None
        lines.append(SEP.join(["X", str(n), old_card.card_number, mask_pan(acc.pan),
                               acc.psn or "", acc.account_ref, HOTLIST_REPLACED]))  # fmt: skip
        acc.hotlist_request_id = request_id
    lines.append(SEP.join(["T", str(count)]))
    ids = tuple(card.id for card, _, _ in rows)
    again = tuple(cid for cid in ids if cid in replaced)
    listed = tuple(old_card.id for old_card, _ in hotlist)
    audit.record(session, actor, "bank.accounts_requested", "bank", bank_code,
                 details={"request_id": request_id, "cards": len(ids), "card_ids": list(ids),
                          **({"replacements": list(again)} if again else {}),
                          **({"hotlisted": list(listed)} if listed else {})})  # fmt: skip
    session.flush()
    return RequestFile(request_id, "\n".join(lines) + "\n", ids, again, listed)


# --- response file -----------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenedAccount:
    """One good line of a response file."""

    line: int
    card_number: str
    pan: str = field(repr=False)
    psn: str
    expiry: date
    service_code: str
    account_ref: str


@dataclass(frozen=True)
class LineProblem:
    line: int
    reason: str
    card_number: str | None = None


@dataclass
class ParsedResponse:
    request_id: str
    bank_code: str
    accounts: list[OpenedAccount]
    problems: list[LineProblem]


def _expiry(text: str) -> date:
    """``YYMM`` -> the last day of that month (EMV tag 5F24 is YYMMDD, the day the month's)."""
    if len(text) != 4 or not text.isdigit() or not 1 <= int(text[2:]) <= 12:
        raise ValueError(f"expiry {text!r} is not YYMM")
    year, month = 2000 + int(text[:2]), int(text[2:])
    return date(year, month, calendar.monthrange(year, month)[1])


def parse_response(text: str, conf: BankSettings, *, today: date | None = None) -> ParsedResponse:
    """Every line of a response file checked (see the module docstring and the format page);
    BankFileInvalid if the header or trailer is wrong (nothing of the file can be trusted)."""
    today = today or date.today()
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise BankFileInvalid("empty response file")
    head = lines[0].rstrip("\r").split(SEP)
    if len(head) != 8 or head[:4] != ["H", FORMAT, VERSION, "RSP"]:
        raise BankFileInvalid(
            "not a bank response file",
            [FieldProblem("line 1", f"the header must be H|{FORMAT}|{VERSION}|RSP|<request id>|"
                                    "<bank>|<time>|<count>")],
        )  # fmt: skip
    if not _REQUEST_ID.fullmatch(head[4]):
        raise BankFileInvalid("bad request id", [FieldProblem("line 1", "request id")])
    trailer = lines[-1].rstrip("\r").split(SEP) if len(lines) > 1 else []
    body = lines[1:-1]
    if len(trailer) != 2 or trailer[0] != "T" or not trailer[1].isdigit():
        raise BankFileInvalid(
            "the response file has no trailer (truncated?)",
            [FieldProblem(f"line {len(lines)}", "the last line must be T|<count>")],
        )
    if not head[7].isdigit() or int(head[7]) != len(body) or int(trailer[1]) != len(body):
        raise BankFileInvalid(
            "the response file's counts do not match its lines (truncated?)",
            [FieldProblem("counts", f"header {head[7]}, trailer {trailer[1]}, lines {len(body)}")],
        )
    parsed = ParsedResponse(head[4], head[5], [], [])
    seen_cards: dict[str, int] = {}
    seen_pans: dict[str, int] = {}
    for number, raw in enumerate(body, start=2):
        problem = _check_line(number, raw.rstrip("\r"), conf, today, seen_cards, seen_pans)
        if isinstance(problem, LineProblem):
            parsed.problems.append(problem)
        else:
            parsed.accounts.append(problem)
    return parsed


def _check_line(
    number: int, raw: str, conf: BankSettings, today: date,
    seen_cards: dict[str, int], seen_pans: dict[str, int],
) -> OpenedAccount | LineProblem:  # fmt: skip
    parts = raw.split(SEP)
    if len(parts) != 8 or parts[0] != "D":
        return LineProblem(number, "not D|<n>|<card number>|<PAN>|<PSN>|<YYMM>|<service code>|"
                                   "<account ref> (8 fields)")  # fmt: skip
    _, seq, card_number, pan, psn, expiry, service, ref = parts
    card = card_number if len(card_number) <= 9 else None

    def bad(reason: str) -> LineProblem:
        return LineProblem(number, reason, card)

    if seq != str(number - 1):
        return bad(f"sequence number {seq!r}, expected {number - 1}")
    try:
        validate_card_number(card_number)
    except (InvalidIdentifier, ValueError):
        return LineProblem(number, "not a valid card number")
    if not pan.isdigit() or not 12 <= len(pan) <= 19:
        return bad("the PAN must be 12 to 19 digits")
    if not luhn_ok(pan):
        return bad(f"PAN {mask_pan(pan)} fails the Luhn check")
    if not any(pan.startswith(b) for b in conf.bins):
        return bad(f"PAN {mask_pan(pan)} is not in the bank's BINs ({', '.join(conf.bins)})")
    if len(psn) != 2 or not psn.isdigit():
        return bad("the PAN sequence number must be 2 digits")
    try:
        exp = _expiry(expiry)
    except ValueError as exc:
        return bad(str(exc))
    if exp < today:
        return bad(f"expiry {expiry} is in the past")
    if len(service) != 3 or not service.isdigit() or service[0] not in "26":
        return bad("the service code must be 3 digits for a chip card (first digit 2 or 6)")
    if not _ACCOUNT_REF.fullmatch(ref):
        return bad("the account reference must be 1-32 letters, digits or . _ / -")
    if card_number in seen_cards:
        return bad(f"card already answered on line {seen_cards[card_number]}")
    if pan in seen_pans:
        return bad(f"PAN {mask_pan(pan)} already given on line {seen_pans[pan]}")
    seen_cards[card_number], seen_pans[pan] = number, number
    return OpenedAccount(number, card_number, pan, psn, exp, service, ref)


@dataclass
class LoadResult:
    request_id: str
    loaded: int = 0
    already: int = 0
    problems: list[LineProblem] = field(default_factory=list)
    waiting: int = 0
    """Cards of the request the file did not answer (still waiting)."""
    kept_as: Path | None = None


def load_response(
    session: Session,
    settings: IssuanceConfig,
    bank_code: str,
    text: str,
    actor: Actor,
    *,
    file_name: str = "response",
    partial: bool = False,
    today: date | None = None,
) -> LoadResult:
    """Check a response file of ``bank_code`` against its request and load the accounts
    (see the module docstring). Refused lines: nothing loaded unless ``partial``
    (:class:`BankFileInvalid` listing every refused line). Audited: ``bank.account_opened``
    per card (PAN masked), ``bank.response_loaded`` per file."""
    if actor.role not in BANK_FILE_STAFF:
        raise PermissionDenied(f"role {actor.role} may not exchange files with a bank")
    _, conf = bank_of(settings, session, bank_code)
    parsed = parse_response(text, conf, today=today)
    if parsed.bank_code != bank_code:
        raise BankFileInvalid(
            "the response file is another bank's",
            [FieldProblem("line 1", f"bank {parsed.bank_code!r}, expected {bank_code!r}")],
        )
    waiting = {
        acc.card_id: acc
        for acc in session.scalars(
            sa.select(BankAccount).where(BankAccount.request_id == parsed.request_id)
        )
    }
    if not waiting:
        raise BankFileInvalid(
            "the response answers no request of ours",
            [FieldProblem("line 1", f"unknown request {parsed.request_id}")],
        )
    numbers = {a.card_number for a in parsed.accounts}
    cards = {c.card_number: c for c in session.scalars(
        sa.select(Card).where(Card.card_number.in_(numbers)))}  # fmt: skip
    pans = {a.pan for a in parsed.accounts}
    taken: dict[str, list[BankAccount]] = {}
    for other in session.scalars(sa.select(BankAccount).where(BankAccount.pan.in_(pans))):
        taken.setdefault(other.pan or "", []).append(other)
    replaced = {
        acc.id: acc for acc in session.scalars(sa.select(BankAccount).where(BankAccount.id.in_(
            [a.replaces_account_id for a in waiting.values() if a.replaces_account_id])))
    }  # fmt: skip
    result = LoadResult(parsed.request_id, problems=list(parsed.problems))
    good: list[tuple[OpenedAccount, BankAccount]] = []
    for opened in parsed.accounts:
        card = cards.get(opened.card_number)
        account = waiting.get(card.id) if card is not None else None
        if card is None or account is None:
            result.problems.append(LineProblem(opened.line, "the card is not in this request",
                                               opened.card_number))  # fmt: skip
            continue
        if account.pan is not None:
            if (account.pan, account.psn, account.expiry, account.service_code,
                    account.account_ref) == (opened.pan, opened.psn, opened.expiry,
                                             opened.service_code, opened.account_ref):  # fmt: skip
                result.already += 1
            else:
                result.problems.append(LineProblem(
                    opened.line, "the card already has other account data from the bank",
                    opened.card_number))  # fmt: skip
            continue
        old = replaced.get(account.replaces_account_id or 0)
        reasons = _binding_problems(opened, card.id, old, taken.get(opened.pan, []))
        if card.status in TERMINAL_CARD_STATUSES:  # asked, then replaced before the answer
            reasons.insert(0, f"the card is {card.status}: no account is opened for it (its "
                              "replacement is asked of the bank)")  # fmt: skip
        if reasons:
            result.problems += [LineProblem(opened.line, r, opened.card_number) for r in reasons]
            continue
        good.append((opened, account))
    result.problems.sort(key=lambda p: p.line)
    if result.problems and not partial:
        raise BankFileInvalid(
            f"{len(result.problems)} line(s) of the response refused; nothing loaded",
            [FieldProblem(f"line {p.line}", p.reason if p.card_number is None
                          else f"card {p.card_number}: {p.reason}") for p in result.problems],
        )  # fmt: skip
    kept = _keep(settings, bank_code, file_name, text)
    result.kept_as = kept
    now = utcnow()
    for opened, account in good:
        account.pan, account.psn, account.expiry = opened.pan, opened.psn, opened.expiry
        account.service_code, account.account_ref = opened.service_code, opened.account_ref
        account.opened_at, account.response_file = now, kept.name
        old = replaced.get(account.replaces_account_id or 0)
        extra = {} if old is None else {"replaces_card_id": old.card_id}
        audit.record(session, actor, "bank.account_opened", "card", account.card_id,
                     details={"bank": bank_code, "request_id": parsed.request_id,
                              "pan": mask_pan(opened.pan), "psn": opened.psn,
                              "account_ref": opened.account_ref, **extra})  # fmt: skip
        result.loaded += 1
    answered = {cards[a.card_number].id for a in parsed.accounts if a.card_number in cards}
    result.waiting = sum(1 for cid, acc in waiting.items()
                         if acc.pan is None and cid not in answered)  # fmt: skip
    audit.record(session, actor, "bank.response_loaded", "bank", bank_code,
                 details={"request_id": parsed.request_id, "file": kept.name,
                          "loaded": result.loaded, "already": result.already,
                          "refused_lines": [p.line for p in result.problems],
                          "waiting": result.waiting})  # fmt: skip
    session.flush()
    return result


def _binding_problems(
    opened: OpenedAccount, card_id: int, replaced: BankAccount | None,
    same_pan: Sequence[BankAccount],
) -> list[str]:  # fmt: skip
    """Every reason the bank's answer ``opened`` for card ``card_id`` cannot be loaded: for a
    replacement (``replaced``: the replaced card's account), the answer must be bound to the
    same account (its account reference) and may keep its PAN with another PAN sequence
    number (the bank decides which); a PAN and PSN pair is never two cards' (the EMV keys
    derive from it), and a PAN already another account's is never given again."""
    reasons = []
    if replaced is not None and opened.account_ref != replaced.account_ref:
        reasons.append(
            f"a replacement must stay bound to account {replaced.account_ref} of the replaced "
            f"card; the answer gives account {opened.account_ref}"
        )
    others = [acc for acc in same_pan if acc.card_id != card_id]
    if replaced is None:
        if others:
            reasons.append(f"PAN {mask_pan(opened.pan)} belongs to another card")
        return reasons
    if any(acc.account_ref != opened.account_ref for acc in others):
        reasons.append(f"PAN {mask_pan(opened.pan)} belongs to another account than "
                       f"{opened.account_ref}")  # fmt: skip
    if any(acc.psn == opened.psn for acc in others):
        reasons.append(f"PAN {mask_pan(opened.pan)} with PAN sequence number {opened.psn} is "
                       "already another card's (the same card keys): the replacement needs "
                       "another sequence number")  # fmt: skip
    return reasons


def _keep(settings: IssuanceConfig, bank_code: str, name: str, text: str) -> Path:
    """A copy of a response file under ``<data_dir>/bank/<bank>/`` (never overwritten)."""
    folder = settings.data_dir / "bank" / bank_code
    folder.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^0-9A-Za-z._-]", "_", Path(name).name) or "response"
    path = folder / f"{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}-{stem}"
    path.write_text(text, encoding="utf-8")
    return path


# --- what data preparation reads --------------------------------------------------------------


@dataclass(frozen=True)
class CardBankData:
    """A card's EMV data from its bank (what goes on the chip and selects its EMV keys)."""

    pan: str = field(repr=False)
    psn: str
    expiry: date
    service_code: str
    key_domain: str
    key_version: int


class NoBankData(ValidationError):
    """A card with a financial application and no account data from its bank: it waits."""


def bank_data(
    session: Session, settings: IssuanceConfig, card_ids: Sequence[int]
) -> dict[int, CardBankData]:
    """The bank data of each of ``card_ids`` that has it (one query)."""
    rows = session.execute(
        sa.select(BankAccount.card_id, BankAccount.pan, BankAccount.psn, BankAccount.expiry,
                  BankAccount.service_code, BankAccount.key_version, Agency.code)
        .join(Agency, Agency.id == BankAccount.bank_agency_id)
        .where(BankAccount.card_id.in_(list(card_ids)), BankAccount.pan.is_not(None))
    ).all()  # fmt: skip
    out = {}
    for card_id, pan, psn, expiry, service, version, code in rows:
        conf = settings.banks.get(code)
        if conf is None:
            continue  # a bank no longer configured: its cards wait (no key domain)
        out[card_id] = CardBankData(pan, psn, expiry, service, conf.key_domain, version)
    return out


def require_bank_data(
    data: dict[int, CardBankData], card_id: int, card_number: str
) -> CardBankData:
    """``data[card_id]`` or :class:`NoBankData` (the card waits, see the module docstring)."""
    found = data.get(card_id)
    if found is None:
        raise NoBankData(
            f"card {card_number}: no account data from the bank yet",
            [FieldProblem("bank", "the card waits for the bank's response file "
                                  "(ykt bank request-file, ykt bank load-response)")],
        )  # fmt: skip
    return found


def card_key_ref(
    card_identification_code: str, key_version: int, algorithm: Algorithm,
    bank: CardBankData | None,
) -> CardKeyRef:  # fmt: skip
    """The one rule of a card's key reference: the card centre's key set ``key_version``, and
    the EMV keys of its bank's key domain by the PAN and PSN the bank gave (none without)."""
    return CardKeyRef(
        card_identification_code=card_identification_code,
        key_version=key_version,
        algorithm=algorithm,
        pan=None if bank is None else bank.pan,
        psn=None if bank is None else bank.psn,
        bank=None if bank is None else bank.key_domain,
        bank_key_version=1 if bank is None else bank.key_version,
    )
