"""API credentials: agencies' client credentials, staff tokens, bearer tokens and scopes.

* An agency is registered with a ``client_id`` and a random ``client_secret`` (shown once);
  only the scrypt hash of the secret is stored (RFC 7914, n=2^14, r=8, p=1, 16-byte salt).
* ``issue_token`` implements the OAuth 2.0 client-credentials grant (RFC 6749 §4.4): an opaque
  256-bit random bearer token, stored as its SHA-256 (a hash of a random 256-bit value needs no
  salt or stretching), with the granted scopes and an expiry.
* Staff act as themselves: ``staff_token`` gives a staff user a token whose scopes follow the
  role; the domain services still enforce the role on every action (maker-checker included).
* ``authenticate`` resolves a bearer token to a :class:`Principal` (who, which scopes, which
  :class:`~issuance.audit.Actor` the domain sees).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache

import sqlalchemy as sa
from sqlalchemy.orm import Session, aliased

from issuance import audit
from issuance.audit import SYSTEM_ACTOR, Actor
from issuance.db import flush
from issuance.errors import ConflictError, FieldProblem, NotFound, PermissionDenied, ValidationError
from issuance.models import (
    Agency,
    AgencyKind,
    ApiAuthEpoch,
    ApiCredential,
    ApiToken,
    Channel,
    Staff,
    StaffRole,
    utcnow,
)

#: Every scope the API knows, with what it allows.
SCOPES: dict[str, str] = {
    "verify": "ask for verification challenges and verify cards",
    "holder:read": "see the holder's name, sex, birth date and masked ID number on a verification",
    "holder:photo": "see the holder's photo on a verification",
    "holder:full_id": "see the holder's full social security number",
    "holder:lookup": "see the holder's name, masked ID number and the card identification "
    "code when reading a card by its number (agencies: granted by an administrator only, "
    "never a default; staff see them anyway)",
    "feed:read": "download the signed status feed",
    "cards:read": "read a card's status",
    "cards:loss": "report a card lost or withdraw a provisional report (remote channels)",
    "cards:lifecycle": "card lifecycle actions (collect, activate, suspend, cancel, replace ...)",
    "financial:activate": "activate the financial function of a card",
    "applications:write": "receive (one by one or a bulk file), process, review, approve and "
    "reject applications; replace an application's photo",
    "applications:read": "read applications",
    "batches:read": "read production batches",
    "audit:read": "query and verify the audit log",
    "deaths:write": "upload a death-record file (cancels the deceased holders' cards)",
    "principals:manage": "disable and enable API clients, agencies and staff users",
    "people:read": "search people and see a person's whole record (staff only: never granted "
    "to an agency)",
    "cash:read": "receipts and the day's cash reconciliation (staff only)",
    "ecard:verify": "verify electronic card codes (the holder's data needs holder:read / "
    "holder:photo / holder:full_id, as for cards)",
    "ecard:manage": "issue electronic cards at a counter, record the holder's authorisation "
    "during a provisional loss, hand out the link to the e-card page (staff only)",
}

#: Scopes only staff tokens carry: an agency's client credentials are never granted them
#: (agencies never list people; the domain refuses them too, ``issuance.services.people``).
STAFF_ONLY_SCOPES = frozenset({"people:read", "cash:read", "ecard:manage"})

#: Default scopes of an agency by kind (``ykt api agency add --scope`` overrides).
AGENCY_DEFAULT_SCOPES: dict[AgencyKind, tuple[str, ...]] = {
    AgencyKind.HOSPITAL: (
        "verify", "holder:read", "holder:photo", "feed:read", "cards:read", "ecard:verify",
    ),
    AgencyKind.PHARMACY: ("verify", "holder:read", "holder:photo", "feed:read", "ecard:verify"),
    AgencyKind.BANK: (
        "verify", "holder:read", "holder:photo", "feed:read", "cards:read", "financial:activate",
        "ecard:verify",
    ),
    # "other" = a self-service platform (hotline, website, app): residents report a lost card
    # and withdraw a provisional report there (DOMAIN.md); such reports are provisional and
    # lapse unless made formal at a counter. An agency that only verifies gets ``--scope``.
    AgencyKind.OTHER: ("verify", "feed:read", "cards:loss"),
    # a community service centre's own systems: verify cards and read the status feed (its
    # clerks hand cards out as staff users, with their own roles)
    AgencyKind.COMMUNITY: ("verify", "feed:read", "ecard:verify"),
}  # fmt: skip

_COUNTER = (
    "verify", "holder:read", "holder:photo", "cards:read", "cards:loss", "cards:lifecycle",
    "applications:write", "applications:read", "batches:read", "feed:read",
)  # fmt: skip

#: Scopes of a staff token by role (the services check the role itself on every action).
STAFF_SCOPES: dict[StaffRole, tuple[str, ...]] = {
    StaffRole.CLERK: (*_COUNTER, "people:read", "cash:read", "ecard:verify", "ecard:manage"),
    StaffRole.SUPERVISOR: (
        *_COUNTER, "holder:full_id", "audit:read", "deaths:write", "principals:manage",
        "people:read", "cash:read", "ecard:verify", "ecard:manage",
    ),
    StaffRole.ADMIN: (
        *_COUNTER, "holder:full_id", "audit:read", "deaths:write", "principals:manage",
        "people:read", "cash:read", "ecard:verify", "ecard:manage",
    ),
    StaffRole.REVIEWER: ("applications:write", "applications:read", "cards:read"),
    StaffRole.APPROVER: ("applications:write", "applications:read", "cards:read"),
    StaffRole.FUND_SUPERVISOR: (
        "cards:read", "cards:lifecycle", "holder:read", "audit:read", "people:read", "cash:read",
    ),
    StaffRole.BANK_TELLER: (
        "verify", "holder:read", "holder:photo", "cards:read", "cards:lifecycle",
        "financial:activate", "applications:write", "feed:read", "people:read", "cash:read",
    ),
    StaffRole.AUDITOR: (
        "audit:read", "cards:read", "applications:read", "batches:read", "people:read",
        "cash:read",
    ),
}  # fmt: skip

#: Role an agency's machine credential acts with in the domain, and its default channel.
AGENCY_ROLES: dict[AgencyKind, tuple[StaffRole, Channel]] = {
    AgencyKind.BANK: (StaffRole.BANK_TELLER, Channel.BANK),
    AgencyKind.HOSPITAL: (StaffRole.SYSTEM, Channel.SYSTEM),
    AgencyKind.PHARMACY: (StaffRole.SYSTEM, Channel.SYSTEM),
    AgencyKind.OTHER: (StaffRole.SYSTEM, Channel.APP),
    AgencyKind.COMMUNITY: (StaffRole.SYSTEM, Channel.SYSTEM),
}

TOKEN_TTL = timedelta(hours=1)
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def hash_secret(secret: str) -> str:
    """``scrypt$n$r$p$salt$hash`` (base64) of a client secret."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode("utf-8"), salt=salt, dklen=32, **_SCRYPT)
    b64 = base64.b64encode
    return (
        f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}$"
        f"{b64(salt).decode()}${b64(digest).decode()}"
    )


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    """The hash an unknown client id's secret is checked against (it matches nothing)."""
    return hash_secret(secrets.token_urlsafe(32))


def check_secret(secret: str, stored: str) -> bool:
    """Constant-time check of ``secret`` against :func:`hash_secret`'s output."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(
            secret.encode("utf-8"),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=32,
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, base64.b64decode(digest))


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()


def check_scopes(scopes: list[str] | tuple[str, ...]) -> list[str]:
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise ValidationError(
            "unknown scopes", [FieldProblem("scope", f"unknown scope {s!r}") for s in unknown]
        )
    return sorted(set(scopes))


@dataclass(frozen=True)
class Principal:
    """Who calls: the credential, its granted scopes and the actor the domain sees."""

    credential_id: int
    client_id: str
    scopes: frozenset[str]
    actor: Actor
    agency_id: int | None
    agency_kind: AgencyKind | None
    staff_id: int | None
    expires_at: datetime
    cert_subject: str | None = None

    @property
    def name(self) -> str:
        return self.actor.username


def canonical_cert_subject(subject: str) -> str:
    """A client certificate subject to bind a credential to (RFC 4514), checked and written
    the one way cryptography writes it (a comma inside a value escaped); the API compares it
    with the presented certificate as a name, RDN by RDN (:func:`api.tls.subject_matches`)."""
    from cryptography import x509

    try:
        name = x509.Name.from_rfc4514_string(subject.strip())
    except ValueError as exc:
        raise ValidationError(
            "bad certificate subject", [FieldProblem("cert_subject", f"not RFC 4514: {exc}")]
        ) from exc
    if not list(name):
        raise ValidationError(
            "bad certificate subject", [FieldProblem("cert_subject", "the subject is empty")]
        )
    return name.rfc4514_string()


@dataclass(frozen=True)
class NewCredential:
    client_id: str
    client_secret: str | None
    scopes: list[str]


def register_agency_client(
    session: Session,
    agency: Agency,
    *,
    scopes: list[str] | None = None,
    cert_subject: str | None = None,
    actor: Actor = SYSTEM_ACTOR,
) -> NewCredential:
    """New client credentials for ``agency`` (the secret is returned once, stored hashed)."""
    granted = check_scopes(scopes if scopes else list(AGENCY_DEFAULT_SCOPES[agency.kind]))
    if cert_subject is not None:
        cert_subject = canonical_cert_subject(cert_subject)
    staff_only = sorted(STAFF_ONLY_SCOPES.intersection(granted))
    if staff_only:
        raise ValidationError(
            "staff-only scopes",
            [FieldProblem("scope", f"{s!r} is never granted to an agency") for s in staff_only],
        )
    client_id = f"{agency.code}-{secrets.token_hex(4)}"
    secret = secrets.token_urlsafe(32)
    cred = ApiCredential(
        client_id=client_id,
        secret_hash=hash_secret(secret),
        agency_id=agency.id,
        scopes=" ".join(granted),
        cert_subject=cert_subject,
    )
    session.add(cred)
    flush(session)
    audit.record(
        session, actor, "api.credential_created", "api_credential", cred.id,
        details={"client_id": client_id, "agency": agency.code, "scopes": granted,
                 "cert_subject": cert_subject},
    )  # fmt: skip
    return NewCredential(client_id, secret, granted)


def _new_token(session: Session, cred: ApiCredential, scopes: list[str], ttl: timedelta) -> str:
    token = secrets.token_urlsafe(32)
    session.add(
        ApiToken(
            token_hash=token_digest(token),
            credential_id=cred.id,
            scopes=" ".join(scopes),
            expires_at=utcnow() + ttl,
        )
    )
    flush(session)
    return token


@dataclass(frozen=True)
class IssuedToken:
    access_token: str
    scopes: list[str]
    expires_in: int


def issue_token(
    session: Session,
    client_id: str,
    client_secret: str,
    requested: list[str] | None = None,
    *,
    ttl: timedelta = TOKEN_TTL,
) -> IssuedToken:
    """The client-credentials grant; raise PermissionDenied on bad credentials or scopes."""
    cred = session.scalars(
        sa.select(ApiCredential).where(ApiCredential.client_id == client_id)
    ).one_or_none()
    # one scrypt check whatever the id: an unknown or disabled client takes as long as a known
    # one (no timing oracle for which client ids exist)
    stored = cred.secret_hash if cred is not None and cred.secret_hash else _dummy_hash()
    secret_ok = check_secret(client_secret, stored)
    if (
        cred is None
        or cred.secret_hash is None
        or not secret_ok
        or not cred.active
        or (cred.agency_id is not None and not _agency_active(session, cred.agency_id))
    ):
        raise PermissionDenied("invalid client credentials", reason="invalid_client")
    allowed = set(cred.scopes.split())
    scopes = sorted(allowed if not requested else set(requested))
    if not set(scopes) <= allowed:
        raise PermissionDenied(
            "scope not granted to this client: " + " ".join(sorted(set(scopes) - allowed)),
            reason="invalid_scope",
        )
    token = _new_token(session, cred, scopes, ttl)
    return IssuedToken(token, scopes, int(ttl.total_seconds()))


def _agency_active(session: Session, agency_id: int) -> bool:
    return bool(session.scalar(sa.select(Agency.active).where(Agency.id == agency_id)))


def staff_token(
    session: Session, username: str, *, ttl: timedelta = timedelta(hours=8)
) -> IssuedToken:
    """A bearer token for a staff user acting as themselves (scopes from the role)."""
    staff = session.scalars(sa.select(Staff).where(Staff.username == username)).one_or_none()
    if staff is None:
        raise NotFound(f"no staff user {username!r}")
    if not staff.active or (
        staff.agency_id is not None and not _agency_active(session, staff.agency_id)
    ):
        raise PermissionDenied(f"staff user {username!r} is disabled")
    scopes = list(STAFF_SCOPES.get(staff.role, ()))
    cred = session.scalars(
        sa.select(ApiCredential).where(ApiCredential.staff_id == staff.id)
    ).first()
    if cred is None:
        cred = ApiCredential(
            client_id=f"staff:{staff.username}"[:64], staff_id=staff.id, scopes=" ".join(scopes)
        )
        session.add(cred)
        try:
            with session.begin_nested():
                flush(session)
        except sa.exc.IntegrityError as exc:
            raise ConflictError("a credential for this staff user was created meanwhile") from exc
    cred.scopes = " ".join(scopes)
    token = _new_token(session, cred, scopes, ttl)
    audit.record(
        session, SYSTEM_ACTOR, "api.staff_token_issued", "staff", staff.id,
        details={"username": staff.username, "scopes": scopes},
    )  # fmt: skip
    return IssuedToken(token, scopes, int(ttl.total_seconds()))


def auth_epoch(session: Session) -> int:
    """The authentication epoch (migration 0011): it grows whenever a principal is disabled,
    enabled or has its tokens revoked. A token resolved at an older epoch is resolved again
    before it is honoured (the API's per-request check, :class:`api.auth.Authenticator`)."""
    return int(session.scalar(sa.select(ApiAuthEpoch.epoch).where(ApiAuthEpoch.id == 1)) or 0)


#: The same read for the API's asyncpg pool (one primary-key read per request).
AUTH_EPOCH_SQL = "SELECT epoch FROM api_auth_epoch WHERE id = 1"


def epoch_holds_sql(held: str) -> str:
    """SQL, true if a token resolved at the authentication epoch ``held`` (an SQL expression;
    NULL: nothing to check) is still valid: ``held`` is the epoch now. The one check of a
    cached token's epoch inside another statement (the API's hot path has its card read and
    its call-log records check it: :mod:`issuance.services.verification`); the epoch is read
    once per statement (an uncorrelated subquery)."""
    return f"({held} IS NULL OR {held} = coalesce(({AUTH_EPOCH_SQL}), 0))"


def bump_auth_epoch(session: Session) -> None:
    """Make every API worker and node resolve its cached tokens again at their next request
    (a principal's state changed, or the failure limit now holds a caller)."""
    session.execute(
        sa.update(ApiAuthEpoch).where(ApiAuthEpoch.id == 1).values(epoch=ApiAuthEpoch.epoch + 1)
    )


def _credential(session: Session, client_id: str) -> ApiCredential:
    cred = session.scalars(
        sa.select(ApiCredential).where(ApiCredential.client_id == client_id)
    ).one_or_none()
    if cred is None:
        raise NotFound(f"no API client {client_id!r}")
    return cred


def _revoke_all(session: Session, credential_ids: sa.ColumnElement[bool]) -> int:
    result = session.execute(
        sa.update(ApiToken)
        .where(credential_ids, ApiToken.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def revoke_tokens(session: Session, client_id: str, actor: Actor = SYSTEM_ACTOR) -> int:
    """Revoke every token of a client *and disable it*: its secret gets no new token until
    :func:`set_client_active` enables it again. Takes effect at once on every API worker and
    node (the authentication epoch grows)."""
    cred = _credential(session, client_id)
    n = _revoke_all(session, ApiToken.credential_id == cred.id)
    cred.active = False
    bump_auth_epoch(session)
    audit.record(
        session, actor, "api.tokens_revoked", "api_credential", cred.id,
        details={"client_id": client_id, "tokens": n, "disabled": True},
    )  # fmt: skip
    return n


def set_client_active(
    session: Session, client_id: str, active: bool, actor: Actor = SYSTEM_ACTOR
) -> ApiCredential:
    """Disable an API client (its tokens are revoked, it gets no new one) or enable it again;
    audited (``api.client_disabled`` / ``api.client_enabled``)."""
    cred = _credential(session, client_id)
    before = cred.active
    cred.active = active
    n = 0 if active else _revoke_all(session, ApiToken.credential_id == cred.id)
    bump_auth_epoch(session)
    audit.record(
        session, actor, "api.client_enabled" if active else "api.client_disabled",
        "api_credential", cred.id, before=str(before), after=str(active),
        details={"client_id": client_id, "tokens_revoked": n},
    )  # fmt: skip
    return cred


def set_agency_active(
    session: Session, code: str, active: bool, actor: Actor = SYSTEM_ACTOR
) -> Agency:
    """Disable an agency (every client of it and every staff user of it stops at once, gets
    no token) or enable it again; audited (``agency.disabled`` / ``agency.enabled``). Its
    clients keep their own state: enabling the agency does not enable a client disabled on
    its own."""
    agency = session.scalars(sa.select(Agency).where(Agency.code == code)).one_or_none()
    if agency is None:
        raise NotFound(f"no agency {code!r}")
    before = agency.active
    agency.active = active
    n = 0
    if not active:  # its clients' tokens, and its staff users' (a bank's tellers)
        staff_ids = sa.select(Staff.id).where(Staff.agency_id == agency.id).scalar_subquery()
        ids = sa.select(ApiCredential.id).where(
            (ApiCredential.agency_id == agency.id) | ApiCredential.staff_id.in_(staff_ids)
        )
        n = _revoke_all(session, ApiToken.credential_id.in_(ids.scalar_subquery()))
    bump_auth_epoch(session)
    audit.record(
        session, actor, "agency.enabled" if active else "agency.disabled", "agency", agency.id,
        before=str(before), after=str(active), details={"code": code, "tokens_revoked": n},
    )  # fmt: skip
    return agency


def set_staff_active(
    session: Session, username: str, active: bool, actor: Actor = SYSTEM_ACTOR
) -> Staff:
    """Disable a staff user (their tokens stop at once; no new token, no CLI action) or enable
    them again; audited (``staff.disabled`` / ``staff.enabled``)."""
    staff = session.scalars(sa.select(Staff).where(Staff.username == username)).one_or_none()
    if staff is None:
        raise NotFound(f"no staff user {username!r}")
    if actor.staff_id is not None and actor.staff_id == staff.id and not active:
        raise PermissionDenied("a staff user cannot disable themselves")
    before = staff.active
    staff.active = active
    n = 0
    if not active:
        ids = sa.select(ApiCredential.id).where(ApiCredential.staff_id == staff.id)
        n = _revoke_all(session, ApiToken.credential_id.in_(ids.scalar_subquery()))
    bump_auth_epoch(session)
    audit.record(
        session, actor, "staff.enabled" if active else "staff.disabled", "staff", staff.id,
        before=str(before), after=str(active),
        details={"username": username, "tokens_revoked": n},
    )  # fmt: skip
    return staff


def authenticate(session: Session, token: str, now: datetime | None = None) -> Principal:
    """The principal of a bearer token; raise PermissionDenied (reason in details)."""
    now = now or utcnow()
    staff_agency = aliased(Agency)
    row = session.execute(
        sa.select(
            ApiToken.scopes,
            ApiToken.expires_at,
            ApiToken.revoked_at,
            ApiCredential.id,
            ApiCredential.client_id,
            ApiCredential.active,
            ApiCredential.cert_subject,
            Agency.id,
            Agency.code,
            Agency.kind,
            Agency.active,
            Staff.id,
            Staff.username,
            Staff.role,
            Staff.active,
            staff_agency.active,
        )
        .join(ApiCredential, ApiCredential.id == ApiToken.credential_id)
        .outerjoin(Agency, Agency.id == ApiCredential.agency_id)
        .outerjoin(Staff, Staff.id == ApiCredential.staff_id)
        .outerjoin(staff_agency, staff_agency.id == Staff.agency_id)
        .where(ApiToken.token_hash == token_digest(token))
    ).one_or_none()
    if row is None:
        raise PermissionDenied("unknown token", reason="invalid_token")
    (scopes, expires_at, revoked_at, cred_id, client_id, cred_active, cert_subject,
     agency_id, agency_code, agency_kind, agency_active, staff_id, username, role,
     staff_active, staff_agency_active) = row  # fmt: skip
    if staff_agency_active is False:  # a staff user of a disabled agency (a bank's tellers)
        raise PermissionDenied("token revoked", reason="invalid_token")
    if revoked_at is not None or not cred_active or agency_active is False:
        raise PermissionDenied("token revoked", reason="invalid_token")
    if expires_at <= now:
        raise PermissionDenied("token expired", reason="invalid_token")
    if staff_id is not None:
        if not staff_active:
            raise PermissionDenied("staff user disabled", reason="invalid_token")
        actor = Actor(username, StaffRole(role), Channel.COUNTER, staff_id)
        kind = None
    else:
        kind = AgencyKind(agency_kind)
        agency_role, channel = AGENCY_ROLES[kind]
        actor = Actor(f"agency:{agency_code}", agency_role, channel, None)
    return Principal(
        cred_id, client_id, frozenset(scopes.split()), actor, agency_id, kind, staff_id,
        expires_at, cert_subject,
    )  # fmt: skip
