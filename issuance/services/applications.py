"""Applications: one-veto validation, intake, and receive → process → review → approve.

Maker–checker (who did each step is recorded on the application):

* always: the reviewer is not the receiver; the approver is neither the receiver, nor the
  processor, nor the reviewer (so at least two people see every application, and the one who
  says yes has touched it at no earlier step);
* where the city splits every step (``[applications] separate_every_step = true``): receive,
  process, review and approve by four different staff users.

Approval creates the card record (a card number is allocated) that production then takes
through the lifecycle. A rejected or withdrawn application gives up its ``import_ref``, so
the same file line sent again after a rejection is imported again, not "already imported".
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cardspec.errors import InvalidIdentifier
from cardspec.ids import CitizenId, validate_citizen_id, validate_region_code
from issuance import audit, lifecycle
from issuance.audit import Actor
from issuance.cardname import CardName, card_name
from issuance.db import flush
from issuance.errors import (
    ConflictError,
    FieldProblem,
    NotFound,
    PermissionDenied,
    PhotoRejected,
    ValidationError,
)
from issuance.lifecycle import ApplicationEvent
from issuance.models import (
    LIVE_APPLICATION_STATUSES,
    Application,
    ApplicationChannel,
    ApplicationStatus,
    Card,
    CollectiveApplicant,
    Person,
    StaffRole,
    utcnow,
)
from issuance.services.card_steps import expire_if_due
from issuance.services.common import create_card, live_formal_card
from issuance.settings import IssuanceConfig, PhotoSettings

#: ``process_photo(data, settings) -> ProcessedPhoto`` (``.jpeg``, ``.sha256``, ``.notes``); raises
#: PhotoRejected. Default: :func:`issuance.photos.process_photo`.
PhotoProcessor = Callable[[bytes, PhotoSettings], Any]

_CJK_NAME = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\U00020000-\U0002ffff·•]+")
_LATIN_NAME = re.compile(r"[A-Za-z][A-Za-z .'\-]*")
_MOBILE = re.compile(r"1[3-9][0-9]{9}")
_LANDLINE = re.compile(r"0[0-9]{2,3}-?[0-9]{7,8}")
_SEX_WORDS = {"1": "1", "2": "2", "男": "1", "女": "2", "M": "1", "F": "2", "9": "9"}

#: Why a record without an ethnicity is refused (the chip's EF06 needs it; never defaulted).
ETHNICITY_REQUIRED = "required: the 2-digit GB 3304 code on the ID card (never defaulted)"

RECEIVERS = {StaffRole.CLERK, StaffRole.SUPERVISOR, StaffRole.ADMIN, StaffRole.BANK_TELLER}
#: who may take each step: declared in the application transition table
PROCESSORS = set(lifecycle.application_roles(ApplicationEvent.PROCESS))
REVIEWERS = set(lifecycle.application_roles(ApplicationEvent.REVIEW))
APPROVERS = set(lifecycle.application_roles(ApplicationEvent.APPROVE))


@dataclass
class ApplicationInput:
    """One applicant's record as received (counter form, API body, or one line of a file).

    Every channel hands it over as received; :func:`normalise` is the one place that trims
    and folds it, so the same record is accepted or refused the same way whatever brought it.
    """

    citizen_id: str
    name: str
    phone: str | None = None
    sex: str | None = None
    #: A date, or its text as received (YYYY-MM-DD), checked with the rest of the record.
    birth_date: date | str | None = None
    region_code: str | None = None  # residence region (decides subsidies); default: issuer's
    ethnicity: str | None = None
    address: str | None = None
    photo: bytes | None = None
    #: The photo as received could not even be read (a channel's encoding, e.g. bad base64):
    #: listed with the record's other problems, never instead of them.
    photo_problem: FieldProblem | None = None


@dataclass
class ValidRecord:
    citizen: CitizenId
    name: str
    phone: str | None
    region_code: str
    ethnicity: str | None
    address: str | None
    photo_jpeg: bytes | None
    photo_sha256: str | None
    photo_exempt: bool
    person: Person | None
    #: What the photo pipeline did beyond cropping (MPO first picture, padding colour).
    photo_notes: tuple[str, ...] = ()

    def card_name(self, settings: IssuanceConfig) -> CardName:
        """The chip's name of this record (the substitution rule, :mod:`issuance.cardname`)."""
        issuer = settings.issuer
        return card_name(self.name, issuer.gbk_substitutes, issuer.gbk_placeholder)


def _identifier(value: str | None) -> str | None:
    """Trimmed, NFKC-folded (full-width digits and letters from a Chinese input method become
    ASCII), upper-cased; empty -> None."""
    if value is None:
        return None
    text = unicodedata.normalize("NFKC", str(value)).strip().upper()
    return text or None


def _text(value: str | None) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def normalise(data: ApplicationInput) -> ApplicationInput:
    """The one normaliser of an application record, for every channel (counter and CLI, API,
    file import): text trimmed, empty text absent; identifiers (citizen ID, phone, region,
    ethnicity, sex code) also NFKC-folded and upper-cased, a phone number's spaces dropped.
    Nothing else is changed: what is still wrong is refused by :func:`validate_record`."""
    phone = _identifier(data.phone)
    birth = data.birth_date
    return ApplicationInput(
        citizen_id=_identifier(data.citizen_id) or "",
        name=_text(data.name) or "",
        phone=phone.replace(" ", "") if phone is not None else None,
        sex=_identifier(data.sex),
        birth_date=_text(birth) if isinstance(birth, str) else birth,
        region_code=_identifier(data.region_code),
        ethnicity=_identifier(data.ethnicity),
        address=_text(data.address),
        photo=data.photo,
        photo_problem=data.photo_problem,
    )


def _age(birth: date, today: date) -> int:
    return today.year - birth.year - ((today.month, today.day) < (birth.month, birth.day))


def check_name(
    name: str, substitutes: Mapping[str, str] | None = None, placeholder: str = "*"
) -> str | None:
    """Reason the name is unusable, or None. CJK names 2-20 characters (middle dot allowed for
    minority names), Latin names 2-60; the chip's name (a character outside GBK replaced by
    the substitution rule, :func:`issuance.cardname.card_name`) must fit EF06 tags 09 + 4E
    (50 bytes of GBK)."""
    if not name:
        return "is required"
    if name != name.strip() or "  " in name:
        return "has leading, trailing or double spaces"
    if _CJK_NAME.fullmatch(name):
        if not 2 <= len(name) <= 20:
            return "a Chinese name must have 2 to 20 characters"
    elif _LATIN_NAME.fullmatch(name):
        if not 2 <= len(name) <= 60:
            return "a Latin-script name must have 2 to 60 characters"
    else:
        return "contains characters that are not allowed (digits, symbols or mixed scripts)"
    try:
        encoded = card_name(name, substitutes or {}, placeholder).text.encode("gbk")
    except UnicodeEncodeError:  # a substitute is GBK (settings): cannot happen
        return "contains characters the card cannot store (not in GBK)"
    if len(encoded) > 50:
        return "is longer than the card can store (50 bytes in GBK)"
    return None


def validate_record(
    session: Session,
    settings: IssuanceConfig,
    data: ApplicationInput,
    *,
    photo_processor: PhotoProcessor | None = None,
    today: date | None = None,
    require_ethnicity: bool = False,
) -> ValidRecord:
    """Check the record as a whole; raise ValidationError listing EVERY problem found.
    ``require_ethnicity``: the counter (the clerk reads it off the ID card) refuses a record
    without one; a file may lack it, and then approval refuses it (the chip needs it)."""
    today = today or date.today()
    data = normalise(data)
    problems: list[FieldProblem] = []
    citizen: CitizenId | None = None
    try:
        citizen = validate_citizen_id(data.citizen_id, today=today)
    except InvalidIdentifier as exc:
        problems.append(FieldProblem("citizen_id", exc.reason))
    name = data.name
    issuer = settings.issuer
    if (reason := check_name(name, issuer.gbk_substitutes, issuer.gbk_placeholder)) is not None:
        problems.append(FieldProblem("name", reason))
    if data.sex is not None:
        sex = _SEX_WORDS.get(data.sex)
        if sex is None:
            problems.append(FieldProblem("sex", "must be 1 (male), 2 (female) or 男/女"))
        elif citizen is not None and sex != citizen.sex:
            problems.append(FieldProblem("sex", "does not match the citizen ID number"))
    birth = data.birth_date
    if isinstance(birth, str):
        try:
            birth = date.fromisoformat(birth)
        except ValueError:
            birth = None
            problems.append(FieldProblem("birth_date", "is not a date (YYYY-MM-DD)"))
    if citizen is not None and birth not in (None, citizen.birth_date):
        problems.append(FieldProblem("birth_date", "does not match the citizen ID number"))
    region = data.region_code or settings.issuer.region_code
    try:
        validate_region_code(region)
    except InvalidIdentifier as exc:
        problems.append(FieldProblem("region_code", exc.reason))
    if data.ethnicity not in (None, "") and not re.fullmatch(r"[0-9]{2}", str(data.ethnicity)):
        problems.append(FieldProblem("ethnicity", "must be a 2-digit GB 3304 code"))
    elif require_ethnicity and data.ethnicity in (None, ""):
        problems.append(FieldProblem("ethnicity", ETHNICITY_REQUIRED))
    phone = data.phone
    if phone is None:
        problems.append(FieldProblem("phone", "a contact phone number is required"))
    elif not (_MOBILE.fullmatch(phone) or _LANDLINE.fullmatch(phone)):
        problems.append(FieldProblem("phone", "is not a mobile (11 digits) or landline number"))
    if data.address is not None and len(data.address) > 200:
        problems.append(FieldProblem("address", "longer than 200 characters"))
    # photo
    exempt = citizen is not None and _age(citizen.birth_date, today) < (
        settings.photos.photo_exempt_under_years
    )
    jpeg = sha = None
    notes: tuple[str, ...] = ()
    if data.photo_problem is not None:
        problems.append(data.photo_problem)
    elif data.photo:
        if photo_processor is None:
            from issuance.photos import process_photo

            photo_processor = process_photo
        try:
            processed = photo_processor(data.photo, settings.photos)
            jpeg, sha, notes = processed.jpeg, processed.sha256, tuple(processed.notes)
        except PhotoRejected as exc:
            problems.extend(exc.problems or [FieldProblem("photo", exc.message)])
    elif not exempt:
        under = settings.photos.photo_exempt_under_years
        problems.append(FieldProblem("photo", f"required (only children under {under} are exempt)"))
    # one person, one number, one live card or application
    person: Person | None = None
    if citizen is not None:
        person = session.scalars(
            sa.select(Person).where(Person.citizen_id == citizen.value)
        ).one_or_none()
        if person is not None:
            if person.death_date is not None:
                problems.append(FieldProblem("citizen_id", "the person is recorded as deceased"))
            if person.name != name and not any(p.field == "name" for p in problems):
                problems.append(FieldProblem("name", "does not match the registered person"))
            card = live_formal_card(session, person.id)
            if card is not None and expire_if_due(session, card, today):
                card = None
            if card is not None:
                problems.append(FieldProblem(
                    "citizen_id", f"already holds a live card ({card.card_number}, {card.status})"
                ))  # fmt: skip
            if live_application(session, person.id) is not None:
                problems.append(
                    FieldProblem("citizen_id", "already has an application in progress")
                )
    if problems:
        raise ValidationError("application rejected", problems)
    assert citizen is not None
    return ValidRecord(
        citizen,
        name,
        phone,
        region,
        data.ethnicity or None,
        data.address,
        jpeg,
        sha,
        exempt and not data.photo,
        person,
        notes,
    )


def live_application(session: Session, person_id: int) -> Application | None:
    return session.scalars(
        sa.select(Application).where(
            Application.person_id == person_id,
            Application.status.in_(LIVE_APPLICATION_STATUSES),
        )
    ).first()


def submit_application(
    session: Session,
    settings: IssuanceConfig,
    data: ApplicationInput,
    actor: Actor,
    *,
    channel: ApplicationChannel = ApplicationChannel.COUNTER,
    collective: CollectiveApplicant | None = None,
    import_ref: str | None = None,
    photo_processor: PhotoProcessor | None = None,
    today: date | None = None,
) -> Application:
    """Validate and record one application (status ``received``)."""
    if actor.role not in RECEIVERS:
        raise PermissionDenied(f"role {actor.role} may not receive applications")
    rec = validate_record(
        session, settings, data, photo_processor=photo_processor, today=today,
        require_ethnicity=channel == ApplicationChannel.COUNTER,
    )  # fmt: skip
    person = rec.person
    on_card = rec.card_name(settings) if person is None else None
    if person is None:
        assert on_card is not None
        person = Person(
            citizen_id=rec.citizen.value, name=rec.name, sex=rec.citizen.sex,
            birth_date=rec.citizen.birth_date, region_code=rec.region_code,
            ethnicity=rec.ethnicity, phone=rec.phone, address=rec.address,
            card_name=on_card.text if on_card.substituted else None,
        )  # fmt: skip
        session.add(person)
    else:
        person.phone = rec.phone or person.phone
        person.region_code = rec.region_code
        person.address = rec.address or person.address
        person.ethnicity = rec.ethnicity or person.ethnicity
    app = Application(
        person=person, channel=channel, status=lifecycle.APPLICATION_INITIAL,
        collective_id=collective.id if collective is not None else None,
        received_by_id=actor.staff_id, phone=rec.phone, photo_jpeg=rec.photo_jpeg,
        photo_sha256=rec.photo_sha256, photo_exempt=rec.photo_exempt, import_ref=import_ref,
    )  # fmt: skip
    session.add(app)
    try:
        with session.begin_nested():
            flush(session)
    except sa.exc.IntegrityError as exc:
        raise ConflictError("an application for this person was recorded at the same time") from exc
    audit.record(
        session, actor, "application.received", "application", app.id,
        after=str(app.status),
        details={"citizen_id": rec.citizen.masked(), "person_id": person.id,
                 "channel": str(channel), "collective_id": app.collective_id,
                 "photo_sha256": rec.photo_sha256,
                 **({"photo_notes": list(rec.photo_notes)} if rec.photo_notes else {})},
    )  # fmt: skip
    if on_card is not None and on_card.substituted:
        audit.record(
            session, actor, "person.card_name_substituted", "person", person.id,
            details={"application_id": app.id, **on_card.audit_details()},
        )  # fmt: skip
    return app


def get_application(session: Session, app_id: int) -> Application:
    app = session.get(Application, app_id)
    if app is None:
        raise NotFound(f"no application {app_id}")
    return app


def _strict(settings: IssuanceConfig | None) -> bool:
    return settings is not None and settings.applications.separate_every_step


def process_application(
    session: Session, app_id: int, actor: Actor, *, settings: IssuanceConfig | None = None
) -> Application:
    app = get_application(session, app_id)
    lifecycle.check_application_role(ApplicationEvent.PROCESS, actor)
    if _strict(settings):
        _maker_checker(app, actor, "process", (app.received_by_id, "received"))
    app.processed_by_id = actor.staff_id
    lifecycle.apply_application_event(session, app, ApplicationEvent.PROCESS, actor)
    return app


def review_application(
    session: Session, app_id: int, actor: Actor, *, settings: IssuanceConfig | None = None
) -> Application:
    app = get_application(session, app_id)
    lifecycle.check_application_role(ApplicationEvent.REVIEW, actor)
    earlier = [(app.received_by_id, "received")]
    if _strict(settings):
        earlier.append((app.processed_by_id, "processed"))
    _maker_checker(app, actor, "review", *earlier)
    app.reviewed_by_id = actor.staff_id
    lifecycle.apply_application_event(session, app, ApplicationEvent.REVIEW, actor)
    return app


def _maker_checker(
    app: Application, actor: Actor, what: str, *earlier: tuple[int | None, str]
) -> None:
    """Refuse ``actor`` for step ``what`` if they did one of the ``earlier`` steps."""
    if actor.staff_id is None:
        raise PermissionDenied(f"only a named staff user may {what} an application")
    for staff_id, step in earlier:
        if staff_id is not None and staff_id == actor.staff_id:
            raise PermissionDenied(
                f"the staff user who {step} application {app.id} may not {what} it "
                "(maker-checker)",
                step=step, action=what,
            )  # fmt: skip


def approve_application(
    session: Session, settings: IssuanceConfig, app_id: int, actor: Actor
) -> Card:
    """Approve a reviewed application and create its card record (number allocated)."""
    app = get_application(session, app_id)
    lifecycle.check_application_role(ApplicationEvent.APPROVE, actor)
    _maker_checker(
        app, actor, "approve",
        (app.received_by_id, "received"), (app.processed_by_id, "processed"),
        (app.reviewed_by_id, "reviewed"),
    )  # fmt: skip
    if not app.person.ethnicity:
        raise ValidationError(
            f"application {app.id} cannot be approved",
            [FieldProblem("ethnicity", ETHNICITY_REQUIRED)],
        )
    if _strict(settings):
        steps = [app.received_by_id, app.processed_by_id, app.reviewed_by_id]
        if None in steps or len(set(steps)) != 3:
            raise PermissionDenied(
                f"application {app.id} was not received, processed and reviewed by three "
                "different staff users (this city separates every step)"
            )
    app.approved_by_id = actor.staff_id
    app.decided_at = utcnow()
    lifecycle.apply_application_event(session, app, ApplicationEvent.APPROVE, actor)
    card = create_card(
        session,
        settings,
        app.person,
        actor,
        application=app,
        reason=f"application {app.id} approved",
    )
    app.card_id = card.id
    flush(session)
    return card


def release_import_ref(app: Application) -> dict[str, Any]:
    """Take the import ref off a rejected / withdrawn application (the unique import ref is
    what makes a re-sent line "already imported"); the audit details keep it."""
    ref, app.import_ref = app.import_ref, None
    return {"import_ref": ref} if ref else {}


def reject_application(session: Session, app_id: int, actor: Actor, reason: str) -> Application:
    app = get_application(session, app_id)
    lifecycle.check_application_role(ApplicationEvent.REJECT, actor)
    lifecycle.application_transition(app, ApplicationEvent.REJECT)  # a live application
    _maker_checker(app, actor, "reject", (app.received_by_id, "received"))
    app.reject_reason, app.decided_at = reason, utcnow()
    details = release_import_ref(app)
    lifecycle.apply_application_event(
        session, app, ApplicationEvent.REJECT, actor, reason=reason, details=details
    )
    return app


def list_applications(
    session: Session, status: ApplicationStatus | None = None, limit: int = 100
) -> list[Application]:
    stmt = sa.select(Application).order_by(Application.id.desc()).limit(limit)
    if status is not None:
        stmt = stmt.where(Application.status == status)
    return list(session.scalars(stmt))
