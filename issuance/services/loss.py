"""Loss reports, un-reporting, the lapse of provisional reports, and replacement.

Design notes: ``docs/design/issuance.md`` (section ``issuance.services.loss``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from issuance import bank, lifecycle
from issuance.audit import SYSTEM_ACTOR, Actor
from issuance.db import flush
from issuance.errors import FieldProblem, TransitionError, ValidationError
from issuance.lifecycle import SOCIAL_KINDS, CardEvent, ChipEvent
from issuance.models import (
    Application,
    Card,
    CardStatus,
    Channel,
    ChipAppKind,
    ChipAppStatus,
    LossKind,
    LossReport,
    LossStatus,
    utcnow,
)
from issuance.services import cash
from issuance.services.card_steps import (
    cancel,
    ecard_follows_card,
    expire_if_due,
    lapse_if_due,
    open_reports,
    restore_event,
)
from issuance.services.common import create_card, find_card
from issuance.settings import IssuanceConfig

REMOTE_CHANNELS = {Channel.PHONE, Channel.WEB, Channel.APP, Channel.WECHAT, Channel.SMS}
IDENTITY_REQUIRED = {
    Channel.WEB, Channel.APP, Channel.WECHAT, Channel.COUNTER, Channel.BANK, Channel.CONSOLE,
}  # fmt: skip
#: Channels whose staff say which kind of report they take (the others: by channel).
KIND_CHOSEN = {Channel.CONSOLE}


def loss_kind(actor: Actor, kind: LossKind | str | None) -> LossKind:
    """The kind of a new report through ``actor.channel``: provisional through the remote
    channels, formal otherwise; the console's clerk says which (``kind``). A ``kind`` the
    channel does not allow is refused."""
    if actor.channel in KIND_CHOSEN:
        if kind is None:
            raise ValidationError("cannot report the loss", [FieldProblem(
                "kind", f"say whether the report is provisional or formal ({actor.channel})"
            )])  # fmt: skip
        return LossKind(kind)
    by_channel = LossKind.PROVISIONAL if actor.channel in REMOTE_CHANNELS else LossKind.FORMAL
    if kind is not None and LossKind(kind) != by_channel:
        raise ValidationError("cannot report the loss", [FieldProblem(
            "kind", f"a report through {actor.channel} is {by_channel}"
        )])  # fmt: skip
    return by_channel


def _require_identity(
    actor: Actor, identity_checked: bool, what: str, *, always: bool = False
) -> None:
    if (always or actor.channel in IDENTITY_REQUIRED) and not identity_checked:
        raise ValidationError(
            f"cannot {what}",
            [FieldProblem("identity_checked", f"identity must be checked ({actor.channel})")],
        )


def holder_mismatch() -> ValidationError:
    """The one refusal of a remote caller's proof of the holder, whatever was missing or
    wrong (it tells nothing about the holder)."""
    return ValidationError(
        "the holder's identity does not match this card",
        [FieldProblem("holder_citizen_id", "give the holder's ID number and name, or the "
                      "one-time code sent to the phone on file; they must match the holder")],
    )  # fmt: skip


def holder_proven(
    session: Session,
    settings: IssuanceConfig,
    card: Card,
    caller: Actor,
    citizen_id: str | None,
    name: str | None,
    code: str | None = None,
    now: datetime | None = None,
) -> bool:
    """Does a remote caller prove the card's holder? By the holder's full ID number and name
    as the caller states them, or by the one-time code sent to the phone on file (the
    hotline's code: :data:`issuance.services.otp.Purpose.LOSS_HOTLINE`, asked for with
    :func:`issuance.services.otp.send_card_code` and checked by the one rule of one-time codes,
    :func:`issuance.services.otp.confirm_card_code`; the try is counted in the caller's
    transaction, which it must commit whatever the answer). Compared in constant time."""
    import hmac

    from issuance.models import Person
    from issuance.services import otp

    if code:
        proven = otp.confirm_card_code(
            session, settings, card.id, code, otp.Purpose.LOSS_HOTLINE, caller, now
        )
        return isinstance(proven, otp.ProvenResident)
    if not citizen_id or not name:
        return False
    row = session.execute(
        sa.select(Person.citizen_id, Person.name).where(Person.id == card.person_id)
    ).one_or_none()
    stored_id, stored_name = row if row is not None else ("", "")
    id_ok = hmac.compare_digest(citizen_id.strip().upper().encode(), stored_id.upper().encode())
    name_ok = hmac.compare_digest(name.strip().encode(), stored_name.strip().encode())
    return id_ok and name_ok


def _suspended(card: Card) -> bool:
    """The card's social functions are suspended (a fund supervisor's suspension, kept
    through a loss report)."""
    social = card.chip_app(ChipAppKind.SOCIAL_SECURITY)
    return social is not None and social.status == ChipAppStatus.SUSPENDED


def report_loss(
    session: Session,
    settings: IssuanceConfig,
    card_id: int,
    actor: Actor,
    *,
    identity_checked: bool = False,
    note: str | None = None,
    now: datetime | None = None,
    kind: LossKind | str | None = None,
) -> LossReport:
    """Report a card lost through ``actor.channel``; the card is blocked at once."""
    now = now or utcnow()
    card = find_card(session, card_id=card_id)
    provisional = loss_kind(actor, kind) == LossKind.PROVISIONAL
    if (
        card.status == CardStatus.LOST_PROVISIONAL
        and actor.channel in (Channel.COUNTER, Channel.CONSOLE)
        and not provisional
    ):
        return formalise_loss(
            session, card_id, actor, identity_checked=identity_checked, note=note, now=now
        )
    _require_identity(actor, identity_checked, "report the loss")
    if card.status == CardStatus.SUSPENDED and not settings.lifecycle.loss_of_suspended_card:
        raise TransitionError(
            f"card {card.card_number} is suspended; in this city a suspended card is reported "
            "lost only after the fund supervisor lifts the suspension "
            "([lifecycle] loss_of_suspended_card = false)",
            from_state=str(card.status), event="report_loss",
        )  # fmt: skip
    event = CardEvent.REPORT_LOSS_PROVISIONAL if provisional else CardEvent.REPORT_LOSS_FORMAL
    lifecycle.apply_card_event(
        session, card, event, actor, reason=note, details={"identity_checked": identity_checked}
    )
    lifecycle.cascade_chips(
        session, card, ChipEvent.BLOCK, actor, kinds=SOCIAL_KINDS, reason="card reported lost"
    )
    report = LossReport(
        card_id=card.id, kind=LossKind.PROVISIONAL if provisional else LossKind.FORMAL,
        status=LossStatus.OPEN, channel=actor.channel, identity_checked=identity_checked,
        reported_at=now, staff_id=actor.staff_id, note=note,
        lapses_at=now + timedelta(hours=settings.lifecycle.provisional_loss_hours)
        if provisional else None,
    )  # fmt: skip
    session.add(report)
    flush(session)
    return report


def formalise_loss(
    session: Session,
    card_id: int,
    actor: Actor,
    *,
    identity_checked: bool,
    note: str | None = None,
    now: datetime | None = None,
) -> LossReport:
    """Turn a provisional report into a formal one at a counter (it no longer lapses)."""
    now = now or utcnow()
    card = find_card(session, card_id=card_id)
    _require_identity(actor, identity_checked, "formalise the loss report")
    lifecycle.apply_card_event(session, card, CardEvent.FORMALISE_LOSS, actor, reason=note)
    for old in open_reports(session, card.id):
        old.status, old.closed_at = LossStatus.FORMALISED, now
    report = LossReport(
        card_id=card.id,
        kind=LossKind.FORMAL,
        status=LossStatus.OPEN,
        channel=actor.channel,
        identity_checked=True,
        reported_at=now,
        staff_id=actor.staff_id,
        note=note,
    )
    session.add(report)
    flush(session)
    return report


def unreport_loss(
    session: Session,
    card_id: int,
    actor: Actor,
    *,
    identity_checked: bool,
    note: str | None = None,
) -> Card:
    """The card was found: withdraw the report (only while no replacement was applied for).

    The holder's identity must have been checked through every channel, phone and SMS
    included: an un-report makes the card usable again.
    """
    card = find_card(session, card_id=card_id)
    _require_identity(actor, identity_checked, "withdraw the loss report", always=True)
    if card.replaced_by_id is not None:  # defence in depth: the table forbids it too
        raise TransitionError(f"card {card.card_number} was replaced; it cannot be un-reported")
    lifecycle.apply_card_event(
        session, card, restore_event(card, CardEvent.UNREPORT), actor, reason=note,
        details={"identity_checked": True},
    )  # fmt: skip
    lifecycle.cascade_chips(
        session, card, ChipEvent.UNBLOCK, actor, kinds=SOCIAL_KINDS, reason="loss report withdrawn"
    )
    for report in open_reports(session, card.id):
        report.status, report.closed_at = LossStatus.WITHDRAWN, utcnow()
    flush(session)
    return card


def expire_provisional_losses(
    session: Session, now: datetime | None = None, limit: int = 10_000
) -> int:
    """Worker/CLI: lapse every provisional report whose time is up. Returns cards restored."""
    now = now or utcnow()
    stmt = (
        sa.select(LossReport.card_id)
        .where(
            LossReport.status == LossStatus.OPEN,
            LossReport.kind == LossKind.PROVISIONAL,
            LossReport.lapses_at <= now,
        )
        .order_by(LossReport.lapses_at)
        .limit(limit)
    )
    count = 0
    for card_id in list(session.scalars(stmt)):
        card = find_card(session, card_id=card_id)
        if lapse_if_due(session, card, now):
            count += 1
    return count


def cancel_overdue_formal_losses(
    session: Session, settings: IssuanceConfig, now: datetime | None = None, limit: int = 10_000
) -> int:
    """Worker/CLI: where the city does so (``formal_loss_cancel_days`` > 0), cancel every card
    formally reported lost that long ago and neither found nor replaced. Returns cards
    cancelled (0 when the setting is 0 = never)."""
    days = settings.lifecycle.formal_loss_cancel_days
    if days <= 0:
        return 0
    now = now or utcnow()
    stmt = (
        sa.select(LossReport.card_id)
        .join(Card, Card.id == LossReport.card_id)
        .where(
            LossReport.status == LossStatus.OPEN,
            LossReport.kind == LossKind.FORMAL,
            LossReport.reported_at <= now - timedelta(days=days),
            Card.status == CardStatus.LOST_FORMAL,
        )
        .order_by(LossReport.reported_at)
        .limit(limit)
    )
    count = 0
    for card_id in list(session.scalars(stmt)):
        card = find_card(session, card_id=card_id, for_update=True)
        if card.status != CardStatus.LOST_FORMAL:  # changed meanwhile
            continue
        cancel(
            session, card, SYSTEM_ACTOR,
            f"formal loss report not withdrawn nor replaced within {days} days",
        )  # fmt: skip
        count += 1
    flush(session)
    return count


@dataclass(frozen=True)
class LossDeadlineReport:
    lapsed: int
    cancelled: int


def run_loss_deadlines(
    session: Session, settings: IssuanceConfig, now: datetime | None = None
) -> LossDeadlineReport:
    """Both loss deadlines: lapse overdue provisional reports, cancel overdue formal ones."""
    now = now or utcnow()
    return LossDeadlineReport(
        expire_provisional_losses(session, now),
        cancel_overdue_formal_losses(session, settings, now),
    )


def replace_card(
    session: Session,
    settings: IssuanceConfig,
    card_id: int,
    actor: Actor,
    *,
    reason: str = "replacement",
    fee_fen: int | None = None,
    today: date | None = None,
) -> Card:
    """Replace a formally lost or damaged card, or renew one: the old one is cancelled for
    good (all its functions), a new card record with a new number starts production.

    Renewal of a working (active) card is possible from ``renewal_window_days`` before its
    expiry date (DOMAIN: from 60 days before); an expired card may be renewed at any time.
    """
    today = today or date.today()
    old = find_card(session, card_id=card_id)
    if old.kind != "formal":
        raise ValidationError("cannot replace", [FieldProblem("card", "not a formal card")])
    expire_if_due(session, old, today)
    if _suspended(old):
        raise TransitionError(
            f"card {old.card_number} is suspended by a fund supervisor: it is not replaced "
            "while suspended (the fund supervisor lifts the suspension once the card is "
            "found and un-reported, or cancels the card)",
            from_state=str(old.status), event=str(CardEvent.REPLACE),
        )  # fmt: skip
    if old.status == CardStatus.ACTIVE:
        days = settings.lifecycle.renewal_window_days
        opens = old.expiry_date - timedelta(days=days) if old.expiry_date else None
        if opens is None or today < opens:
            raise ValidationError("cannot renew", [FieldProblem(
                "card", f"card {old.card_number} is valid until {old.expiry_date}: renewal is "
                        f"possible from {opens} ({days} days before expiry); a lost or damaged "
                        "card is reported first",
            )])  # fmt: skip
    lifecycle.apply_card_event(session, old, CardEvent.REPLACE, actor, reason=reason)
    lifecycle.cascade_chips(session, old, ChipEvent.CANCEL, actor, reason="card replaced")
    for report in open_reports(session, old.id):
        report.status, report.closed_at = LossStatus.REPLACED, utcnow()
    flush(session)  # the old card leaves the "one live card" index before the new one enters
    fee = settings.lifecycle.replacement_fee_fen if fee_fen is None else fee_fen
    # the replacement keeps the original card's application (its photo is printed again):
    # batch selection takes it as the card of that application (issuance.batches.selection)
    original = session.get(Application, old.application_id) if old.application_id else None
    new = create_card(
        session, settings, old.person, actor, fee_fen=fee, application=original,
        reason=f"replaces card {old.card_number}",
    )  # fmt: skip
    old.replaced_by_id = new.id
    flush(session)
    bank.card_replaced(session, old, new, actor)  # the holder keeps the bank account
    ecard_follows_card(session, old, actor)  # the e-card moves to the new card
    cash.issue_receipt(session, actor, cash.ReceiptKind.FEE, fee, new,
                       f"replacement of card {old.card_number}", at=new.created_at)  # fmt: skip
    return new
