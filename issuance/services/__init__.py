"""Service layer of the issuance domain: every state change goes through here.

Services take a ``Session`` and an :class:`~issuance.audit.Actor`, flush, and never commit (the
caller owns the transaction, e.g. :func:`issuance.db.transaction`). Errors are
:mod:`issuance.errors` (``ValidationError`` with every ``FieldProblem``, ``TransitionError``,
``PermissionDenied``, ``ConflictError``, ``NotFound``).
"""

from __future__ import annotations

from issuance.audit import SYSTEM_ACTOR, Actor
from issuance.services.applications import (
    ApplicationInput,
    approve_application,
    list_applications,
    process_application,
    reject_application,
    review_application,
    submit_application,
    validate_record,
)
from issuance.services.cards import (
    CardView,
    CollectResult,
    activate_card,
    activate_financial,
    advance_production,
    cancel_card,
    card_status,
    collect_card,
    expire_cards,
    expire_if_due,
    lift_suspension,
    report_damaged,
    suspend_card,
)
from issuance.services.common import allocate_card_numbers, create_card, find_card, get_person
from issuance.services.deaths import DeathFeedReport, cancel_deaths
from issuance.services.financial import (
    BankAttestation,
    PinPad,
    PinSetOnCard,
    set_financial_pin,
)
from issuance.services.loss import (
    LossDeadlineReport,
    cancel_overdue_formal_losses,
    expire_provisional_losses,
    formalise_loss,
    replace_card,
    report_loss,
    run_loss_deadlines,
    unreport_loss,
)
from issuance.services.outbox import (
    HttpSink,
    LogSink,
    Sink,
    SmtpSink,
    drain_outbox,
    enqueue,
)
from issuance.services.staff import (
    actor_for,
    authenticate_staff,
    create_agency,
    create_staff,
    get_or_create_collective,
    set_password,
)
from issuance.services.temporary import (
    find_deposit,
    hand_back_temporary_card,
    issue_temporary_card,
    refund_deposit,
)

__all__ = [
    "SYSTEM_ACTOR",
    "Actor",
    "ApplicationInput",
    "BankAttestation",
    "CardView",
    "CollectResult",
    "DeathFeedReport",
    "HttpSink",
    "LogSink",
    "LossDeadlineReport",
    "PinPad",
    "PinSetOnCard",
    "Sink",
    "SmtpSink",
    "activate_card",
    "activate_financial",
    "actor_for",
    "advance_production",
    "allocate_card_numbers",
    "approve_application",
    "authenticate_staff",
    "cancel_card",
    "cancel_deaths",
    "cancel_overdue_formal_losses",
    "card_status",
    "collect_card",
    "create_agency",
    "create_card",
    "create_staff",
    "drain_outbox",
    "enqueue",
    "expire_cards",
    "expire_if_due",
    "expire_provisional_losses",
    "find_card",
    "find_deposit",
    "formalise_loss",
    "get_or_create_collective",
    "get_person",
    "hand_back_temporary_card",
    "issue_temporary_card",
    "lift_suspension",
    "list_applications",
    "process_application",
    "refund_deposit",
    "reject_application",
    "replace_card",
    "report_damaged",
    "report_loss",
    "review_application",
    "run_loss_deadlines",
    "set_financial_pin",
    "set_password",
    "submit_application",
    "suspend_card",
    "unreport_loss",
    "validate_record",
]
