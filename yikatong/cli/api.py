"""``ykt api``: register agencies and staff tokens; ``ykt serve`` and ``ykt verify``."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console
from sqlalchemy.orm import Session

from cardspec.reader import Reader
from issuance.audit import Actor
from yikatong.settings import Settings

app = typer.Typer(no_args_is_help=True)
out = Console()

AS_ADMIN = (
    "admin or supervisor acting, with their password (default: $YKT_STAFF); not needed while "
    "no staff user has a password yet (a new installation)"
)


def _admin(session: Session, as_: str | None) -> Actor:
    """The acting admin or supervisor (authenticated), or the system while bootstrapping."""
    from yikatong.cli.db import admin_or_bootstrap

    return admin_or_bootstrap(session, as_, "manage API clients")


@app.command("agency-add")
def agency_add(
    code: str = typer.Argument(..., help="short unique code, e.g. hz-hospital-1"),
    name: str = typer.Option(..., help="display name"),
    kind: str = typer.Option("hospital", help="hospital, pharmacy, bank or other"),
    region: str = typer.Option("330100", help="GB/T 2260 region code"),
    scope: list[str] = typer.Option(
        [], "--scope", help="scopes to grant (default: by kind); repeat the option"
    ),
    cert_subject: str | None = typer.Option(
        None, help="mutual TLS: the client certificate subject this client must present"
    ),
    as_: str | None = typer.Option(None, "--as", help=AS_ADMIN),
) -> None:
    """Register an agency and its client credentials (the secret is shown once)."""
    from issuance import services
    from issuance.services import credentials
    from yikatong.cli.db import session_scope

    with session_scope() as s:
        actor = _admin(s, as_)
        agency = services.create_agency(s, code, name, kind, region, actor=actor)
        new = credentials.register_agency_client(
            s, agency, scopes=scope or None, cert_subject=cert_subject, actor=actor
        )
    out.print(f"client_id     {new.client_id}")
    out.print(f"client_secret {new.client_secret}   (shown once; stored hashed)")
    out.print(f"scopes        {' '.join(new.scopes)}")


@app.command("client-add")
def client_add(
    agency_code: str = typer.Argument(..., help="code of a registered agency"),
    scope: list[str] = typer.Option([], "--scope"),
    cert_subject: str | None = typer.Option(None),
    as_: str | None = typer.Option(None, "--as", help=AS_ADMIN),
) -> None:
    """Another set of client credentials for an existing agency (e.g. a second site)."""
    import sqlalchemy as sa

    from issuance.errors import NotFound
    from issuance.models import Agency
    from issuance.services import credentials
    from yikatong.cli.db import session_scope

    with session_scope() as s:
        actor = _admin(s, as_)
        agency = s.scalars(sa.select(Agency).where(Agency.code == agency_code)).one_or_none()
        if agency is None:
            raise NotFound(f"no agency {agency_code!r}")
        new = credentials.register_agency_client(
            s, agency, scopes=scope or None, cert_subject=cert_subject, actor=actor
        )
    out.print(f"client_id     {new.client_id}")
    out.print(f"client_secret {new.client_secret}   (shown once; stored hashed)")


@app.command("staff-token")
def staff_token(
    username: str = typer.Argument(..., help="staff user acting as themselves"),
    hours: float = typer.Option(8.0, min=0.01, max=24.0, help="token lifetime"),
) -> None:
    """A bearer token for a staff user acting as themselves: the user proves it with their
    password ($YKT_STAFF_PASSWORD, $YKT_STAFF_PASSWORD_FILE or a prompt). Scopes follow the
    role; the token is printed once and stored hashed."""
    from datetime import timedelta

    from issuance.services import credentials
    from yikatong.cli.db import acting, session_scope

    with session_scope() as s:
        acting(s, username)  # the user themself, by password
        issued = credentials.staff_token(s, username, ttl=timedelta(hours=hours))
    typer.echo(issued.access_token)


@app.command("revoke")
def revoke(
    client_id: str = typer.Argument(...),
    as_: str | None = typer.Option(None, "--as", help=AS_ADMIN),
) -> None:
    """Revoke every token of a client and disable it (at once, on every node); it gets no new
    token until ``ykt api client-enable``."""
    from issuance.services import credentials
    from yikatong.cli.db import session_scope

    with session_scope() as s:
        n = credentials.revoke_tokens(s, client_id, _admin(s, as_))
    out.print(f"{n} token(s) revoked")


def _set_active(kind: str, name: str, active: bool, as_: str | None) -> None:
    from issuance.services import credentials
    from yikatong.cli.db import session_scope

    setter = {
        "client": credentials.set_client_active,
        "agency": credentials.set_agency_active,
        "staff": credentials.set_staff_active,
    }[kind]
    with session_scope() as s:
        setter(s, name, active, _admin(s, as_))
    state = "enabled" if active else "disabled (its tokens stopped on every node)"
    out.print(f"{kind} {name} {state}")


@app.command("client-disable")
def client_disable(
    client_id: str = typer.Argument(...),
    as_: str | None = typer.Option(None, "--as", help=AS_ADMIN),
) -> None:
    """Disable an API client: its tokens stop at once on every node; it gets no new one."""
    _set_active("client", client_id, False, as_)


@app.command("client-enable")
def client_enable(
    client_id: str = typer.Argument(...),
    as_: str | None = typer.Option(None, "--as", help=AS_ADMIN),
) -> None:
    """Enable a disabled (or revoked) API client again."""
    _set_active("client", client_id, True, as_)


@app.command("agency-disable")
def agency_disable(
    code: str = typer.Argument(..., help="agency code"),
    as_: str | None = typer.Option(None, "--as", help=AS_ADMIN),
) -> None:
    """Disable an agency: every client of it stops at once and gets no token."""
    _set_active("agency", code, False, as_)


@app.command("agency-enable")
def agency_enable(
    code: str = typer.Argument(..., help="agency code"),
    as_: str | None = typer.Option(None, "--as", help=AS_ADMIN),
) -> None:
    """Enable a disabled agency again (its clients disabled on their own stay disabled)."""
    _set_active("agency", code, True, as_)


@app.command("staff-disable")
def staff_disable(
    username: str = typer.Argument(...),
    as_: str | None = typer.Option(None, "--as", help=AS_ADMIN),
) -> None:
    """Disable a staff user: their tokens stop at once on every node."""
    _set_active("staff", username, False, as_)


@app.command("staff-enable")
def staff_enable(
    username: str = typer.Argument(...),
    as_: str | None = typer.Option(None, "--as", help=AS_ADMIN),
) -> None:
    """Enable a disabled staff user again."""
    _set_active("staff", username, True, as_)


@app.command("bind-bank")
def bind_bank(
    card_number: str = typer.Argument(..., help="the card"),
    bank: str = typer.Argument(..., help="code of the bank agency the card was issued for"),
    as_: str | None = typer.Option(None, "--as", help=AS_ADMIN),
) -> None:
    """Record the bank a card's financial function was issued for: only that bank's system
    may activate it through the API (with the card presented)."""
    from issuance import services
    from issuance.services.financial import bind_bank as bind
    from yikatong.cli.db import session_scope

    with session_scope() as s:
        card = services.find_card(s, card_number=card_number)
        bind(s, card.id, bank, _admin(s, as_))
    out.print(f"card {card_number}: financial function bound to bank {bank}")


@app.command("scopes")
def scopes() -> None:
    """List the scopes and what they allow."""
    from issuance.services.credentials import SCOPES

    for name, text in SCOPES.items():
        out.print(f"{name:20} {text}")


@app.command("openapi")
def openapi(path: Path = typer.Argument(Path("openapi.json"))) -> None:
    """Write the OpenAPI document."""
    import json

    from yikatong.cli.db import settings
    from yikatong.wiring import api_app

    path.write_text(json.dumps(api_app(settings()).openapi(), indent=1, ensure_ascii=False))
    out.print(f"wrote {path}")


def serve(
    host: str | None = typer.Option(None, help="default: [api] host"),
    port: int | None = typer.Option(None, help="default: [api] port"),
    workers: int | None = typer.Option(
        None, min=1, help="worker processes (default: [api] workers if set, else the CPU count)"
    ),
    forwarded_allow_ips: str = typer.Option(
        "127.0.0.1", help="proxies trusted for X-Forwarded-For/Proto"
    ),
) -> None:
    """Serve the API with uvicorn: worker processes (each with its own HSM session), proxy
    headers, no access log (URLs can carry card numbers), TLS and mutual TLS from the
    api settings."""
    import uvicorn

    from api.tls import uvicorn_tls_options
    from yikatong.cli.db import settings

    conf = settings()
    n = worker_count(workers, conf)
    uvicorn.run(
        "yikatong.wiring:app_from_env",
        factory=True,
        host=host or conf.api.host,
        port=port or conf.api.port,
        workers=n,
        proxy_headers=True,
        forwarded_allow_ips=forwarded_allow_ips,
        access_log=False,
        server_header=False,
        log_level="info",
        timeout_graceful_shutdown=10,
        **uvicorn_tls_options(conf),
    )


def worker_count(flag: int | None, conf: Settings) -> int:
    """Worker processes: the ``--workers`` flag, else ``[api] workers`` when the settings give
    it (file or ``YKT_API__WORKERS``), else one per CPU."""
    if flag is not None:
        return flag
    if "workers" in conf.api.model_fields_set:
        return conf.api.workers
    return os.cpu_count() or conf.api.workers


def verify(
    url: str = typer.Option("http://127.0.0.1:8000", help="the API"),
    token: str | None = typer.Option(None, envvar="YKT_API_TOKEN", help="bearer token"),
    client_id: str | None = typer.Option(None, envvar="YKT_CLIENT_ID"),
    client_secret: str | None = typer.Option(None, envvar="YKT_CLIENT_SECRET"),
    card_image: Path | None = typer.Option(
        None, help="an emulated card image (default: the first card in <data_dir>/cards)"
    ),
    card_number: str | None = typer.Option(
        None, help="the emulated card with this card number (its image in <data_dir>/cards)"
    ),
    reader: str | None = typer.Option(None, help="a PC/SC reader name instead of the emulator"),
    application: str = typer.Option("social_security", help="medical, pension, financial ..."),
    holder: bool = typer.Option(False, "--holder", help="ask for the holder's identity"),
    sm2: bool = typer.Option(
        False, "--sm2", help="SM4 cards: also the chip's SM2 signature and card certificate"
    ),
) -> None:
    """Verify the card in a reader against the API (challenge, INTERNAL AUTHENTICATE, verdict;
    with ``--sm2`` the chip's SM2 signature over the challenge as a second proof)."""
    from api.client import YktClient, card_profile_in_reader, verify_card_in_reader

    if token:
        client = YktClient.with_token(url, token)
    elif client_id and client_secret:
        client = YktClient.with_client_credentials(url, client_id, client_secret)
    else:
        raise typer.BadParameter("give --token or --client-id and --client-secret")
    if card_number is not None:
        if card_image is not None or reader is not None:
            raise typer.BadParameter("give one of --card-number, --card-image and --reader")
        card_image = card_image_for(card_number)
    card_reader = _reader(reader, card_image)
    profile = card_profile_in_reader(card_reader)
    if sm2 and profile.algorithm.value != "sm4":
        raise typer.BadParameter(f"--sm2: the card announces {profile.algorithm.value}, not sm4")
    with client:
        v = verify_card_in_reader(
            client, card_reader, application=application, include_holder=holder,
            profile=profile, sm2=sm2,
        )  # fmt: skip
    verdict = "VALID" if v["valid"] else f"INVALID ({v.get('reason')})"
    typer.echo(f"{verdict}  card {v.get('card_number')}  application {v['application']}"
               f"  keys {profile.algorithm.value}"
               + ("  SM2 signature checked too" if sm2 and v["valid"] else ""))  # fmt: skip
    if v.get("holder"):
        h = v["holder"]
        typer.echo(f"holder {h['name']} {h['citizen_id']} born {h['birth_date']}")
    raise typer.Exit(0 if v["valid"] else 1)


def card_image_for(card_number: str, cards_dir: Path | None = None) -> Path:
    """The emulated chip of card ``card_number``: ``<cards_dir>/<chip serial>.json``. The chip
    serial is the tail of the card identification code the database holds; without a database
    record, every image's EF05 is read until the number is found."""
    from cardspec.errors import InvalidIdentifier
    from cardspec.ids import parse_card_number
    from yikatong.cli.db import settings

    try:
        number = parse_card_number(card_number)  # the check character first: no search of a typo
    except InvalidIdentifier as exc:
        raise typer.BadParameter(f"card number {card_number!r}: {exc.reason}") from None
    conf = settings()
    directory = cards_dir or conf.cards_dir
    cic = _identification_code_in_db(conf, number)
    if cic is not None:
        path = directory / f"{cic[16:].upper()}.json"
        if path.is_file():
            return path
    from cardspec.cardops import read_card_public
    from cardspec.emulator import Card as EmulatedCard
    from cardspec.errors import CardSpecError
    from cardspec.reader import InProcessReader

    for path in sorted(directory.glob("*.json")):
        try:
            chip = InProcessReader(EmulatedCard.load(path))
            found = read_card_public(chip).card_number
            chip.disconnect()
        except (CardSpecError, OSError, ValueError):
            continue  # a blank or damaged image
        if found == number:
            return path
    raise typer.BadParameter(f"no emulated card with number {number} in {directory}")


def _identification_code_in_db(conf: Settings, number: str) -> str | None:
    import sqlalchemy as sa

    from issuance.db import make_engine
    from issuance.models import Card

    url = sa.make_url(conf.database_url)
    if url.get_backend_name() == "sqlite" and not Path(url.database or "").is_file():
        return None  # no database here (a terminal's machine): look at the images themselves
    engine = make_engine(conf)
    try:
        with engine.connect() as conn:
            return conn.execute(
                sa.select(Card.card_identification_code).where(Card.card_number == number)
            ).scalar_one_or_none()
    except sa.exc.SQLAlchemyError:
        return None
    finally:
        engine.dispose()


def _reader(name: str | None, image: Path | None) -> Reader:
    from cardspec.reader import InProcessReader

    if name is not None:
        from readers.pcsc import PcscReader

        return PcscReader(name)
    if image is None:
        from yikatong.cli.db import settings

        images = sorted(settings().cards_dir.glob("*"))
        if not images:
            raise typer.BadParameter("no emulated card found; give --card-image or --reader")
        image = images[0]
    from cardspec.emulator import Card

    return InProcessReader(Card.load(image), name=f"emulator {image.name}")


#: Root-level commands (``ykt serve``, ``ykt verify``), registered by yikatong.cli.main.
TOP_LEVEL_COMMANDS = {"serve": serve, "verify": verify}
