"""``ykt demo``: the whole card centre on the embedded defaults, end to end.

Sample residents (the shipped real face photos, ``issuance/sample_data/photos``) apply at the
counter and through a community; a clerk receives and processes the applications, a reviewer
and a different approver decide; a production batch is created; data preparation; personalisation
on virtual readers (isolated pcscd + vpcd + the card emulator, started here and stopped after);
printing to the file spool; quality check; shipping to a bank branch; collection by the
holders; one holder activates the card at the bank. It ends by printing where the card images
and the batch report are, and the exact ``ykt verify`` command with which a hospital developer
checks that card against the API. Interrupted (Ctrl-C), it prints the command that finishes
the batch.

Re-runnable: staff, the branch and the community are created once; every run adds new
residents (fresh citizen ID numbers) and a new batch.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cardspec.ids import citizen_id_check_char, mask_citizen_id
from issuance.audit import Actor
from issuance.models import (
    Agency,
    AgencyKind,
    ApplicationChannel,
    Channel,
    CollectiveKind,
    Person,
    Staff,
    StaffRole,
)
from yikatong.settings import PROJECT_ROOT, Settings
from yikatong.wiring import hsm_config

PHOTOS_DIR = PROJECT_ROOT / "issuance" / "sample_data" / "photos"
DEMO_STAFF = (
    ("demo-clerk", StaffRole.CLERK, "王芳 (clerk)"),
    ("demo-reviewer", StaffRole.REVIEWER, "李强 (reviewer)"),
    ("demo-approver", StaffRole.APPROVER, "张伟 (approver)"),
    ("demo-operator", StaffRole.SUPERVISOR, "刘洋 (production)"),
    ("demo-teller", StaffRole.BANK_TELLER, "陈静 (bank teller)"),
    ("demo-admin", StaffRole.ADMIN, "赵敏 (administrator)"),
    ("demo-auditor", StaffRole.AUDITOR, "孙丽 (auditor)"),
)
BRANCH_CODE = "ICBC-330106-01"
HOSPITAL_CODE = "demo-hospital-330106"
COMMUNITY = "西湖区北山街道社区"
_SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
_GIVEN = ("秀英", "建国", "晓明", "丽娟", "志强", "海燕", "文博", "思琪", "子涵", "国平", "春梅")
#: Districts of Hangzhou (GB/T 2260) the sample residents live in.
_DISTRICTS = ("330102", "330105", "330106", "330108", "330110")


def sample_photos() -> list[bytes]:
    files = sorted(PHOTOS_DIR.glob("resident-*.jpg"))
    if not files:
        raise FileNotFoundError(f"no sample photos in {PHOTOS_DIR}")
    return [p.read_bytes() for p in files]


def _citizen_ids(session: Session, start: int) -> Iterator[tuple[str, str]]:
    """Fresh valid citizen ID numbers (with their region), skipping any already registered."""
    for n in itertools.count(start):
        region = _DISTRICTS[n % len(_DISTRICTS)]
        birth = date(1960, 1, 1) + timedelta(days=(n * 997) % 18000)
        body = f"{region}{birth:%Y%m%d}{(n * 7) % 1000:03d}"
        cid = body + citizen_id_check_char(body)
        exists = session.scalars(sa.select(Person.id).where(Person.citizen_id == cid)).first()
        if exists is None:
            yield cid, region


def ensure_staff(session: Session) -> dict[str, Actor]:
    from issuance import services

    actors: dict[str, Actor] = {}
    # the teller works at the demo branch, when it exists (the console's branch page)
    branch = session.scalar(sa.select(Agency.id).where(Agency.code == BRANCH_CODE))
    for username, role, display in DEMO_STAFF:
        if session.scalars(sa.select(Staff).where(Staff.username == username)).first() is None:
            agency_id = branch if role == StaffRole.BANK_TELLER else None
            services.create_staff(session, username, role, display_name=display,
                                  agency_id=agency_id)  # fmt: skip
        channel = Channel.BANK if role == StaffRole.BANK_TELLER else Channel.COUNTER
        actors[username] = services.actor_for(session, username, channel)
    return actors


def ensure_logins(session: Session) -> list[tuple[str, str, str | None]]:
    """A console login for every demo staff user: ``(username, role, password)``, the password
    generated now for a user who has none (shown once by the demo, stored hashed), None for
    one who already had a password (an earlier demo run, or set by hand)."""
    from issuance.audit import SYSTEM_ACTOR
    from issuance.services.staff import generate_password, set_password

    logins: list[tuple[str, str, str | None]] = []
    for username, role, _ in DEMO_STAFF:
        staff = session.scalars(sa.select(Staff).where(Staff.username == username)).one()
        password = None
        if staff.password_hash is None:
            password = generate_password()
            set_password(session, username, password, SYSTEM_ACTOR)
        logins.append((username, str(role), password))
    return logins


def ensure_branch(session: Session, settings: Settings) -> Agency:
    from issuance import services

    agency = session.scalars(sa.select(Agency).where(Agency.code == BRANCH_CODE)).first()
    if agency is None:
        agency = services.create_agency(
            session, BRANCH_CODE, "中国工商银行杭州西湖支行", AgencyKind.BANK, "330106"
        )
    return agency


@dataclass(frozen=True)
class Resident:
    application_id: int
    masked_id: str
    name: str


def create_residents(
    session: Session,
    settings: Settings,
    actors: dict[str, Actor],
    count: int,
    *,
    on_resident: Callable[[], None] | None = None,
) -> list[Resident]:
    """``count`` new residents apply (every third through the community), are processed,
    reviewed and approved by three different staff members; their cards get numbers."""
    from issuance import services

    photos = sample_photos()
    clerk, reviewer, approver = (actors["demo-clerk"], actors["demo-reviewer"],
                                 actors["demo-approver"])  # fmt: skip
    community = services.get_or_create_collective(
        session, COMMUNITY, kind=CollectiveKind.COMMUNITY, region_code="330106", actor=clerk
    )
    start = int(session.scalar(sa.select(sa.func.count()).select_from(Person)) or 0)
    ids = _citizen_ids(session, start + 1)
    out: list[Resident] = []
    for n in range(count):
        cid, region = next(ids)
        name = _SURNAMES[(start + n) % len(_SURNAMES)] + _GIVEN[(start + n) % len(_GIVEN)]
        collective = community if n % 3 == 2 else None
        data = services.ApplicationInput(
            citizen_id=cid, name=name, phone=f"139{(start + n) % 10**8:08d}",
            region_code=region, photo=photos[n % len(photos)],
            address=f"杭州市西湖区示例路{n + 1}号", ethnicity="01" if n % 7 else "02",
        )  # fmt: skip
        app = services.submit_application(
            session, settings, data, clerk,
            channel=ApplicationChannel.COLLECTIVE if collective else ApplicationChannel.COUNTER,
            collective=collective,
        )  # fmt: skip
        services.process_application(session, app.id, clerk)
        services.review_application(session, app.id, reviewer)
        services.approve_application(session, settings, app.id, approver)
        out.append(Resident(app.id, mask_citizen_id(cid), name))
        if on_resident is not None:
            on_resident()
    return out


#: What ``ykt demo --algorithm sm4`` needs when the HSM has no SM table: the SM test module
#: the setup builds (``hsm.smtoken``; tests and demos only) with a vendor table, and SM2 as the
#: signing key (the module has no ECDSA).
SM4_DEMO_HSM = (
    "export YKT_HSM__MODULE=$PWD/var/lib/libykt-smp11.so YKT_HSM__VENDOR=ibm YKT_HSM__SIGNING=sm2"
)


def with_card_algorithm(settings: Settings, algorithm: str) -> Settings:
    """``settings`` with ``[issuer] card_algorithm = algorithm`` (the demo's ``--algorithm``)."""
    issuer = settings.issuer.model_copy(update={"card_algorithm": algorithm})
    return settings.model_copy(update={"issuer": issuer})


def ensure_hsm(settings: Settings) -> None:
    """The token and master keys of ``[issuer] card_algorithm`` (``ykt hsm init --algorithm
    ALG --if-missing`` does the same): SoftHSM2, or the SM test module for SM4 cards."""
    from cardspec.keyscheme import Algorithm
    from hsm import ceremony, smtoken, softhsm, vendors
    from hsm.pkcs11 import open_token
    from issuance.errors import ConfigError

    alg = Algorithm(settings.issuer.card_algorithm)
    config = hsm_config(settings)
    if alg is Algorithm.SM4 and vendors.table(config.vendor) is None:
        raise ConfigError(
            f"SM4 cards need an HSM with SM4 ([hsm] vendor names an SM mechanism table; "
            f"{config.module.name} is configured with none). For the demo, the SM test "
            f"module built by the setup:\n  {SM4_DEMO_HSM}"
        )
    if config.is_sm_test_module and config.signing != "sm2":
        raise ConfigError(
            f'the SM test module offers SM2 but no ECDSA: set [hsm] signing = "sm2"\n'
            f"  {SM4_DEMO_HSM}"
        )
    if config.is_softhsm:
        softhsm.ensure_token(config)
    elif config.is_sm_test_module:
        smtoken.ensure_token(config)
    ceremony.init_keys(open_token(config), alg)


#: The demo bank's HSM key domain (its issuer master keys ``ykt:bank:demo-icbc:imk-*``).
DEMO_BANK_DOMAIN = "demo-icbc"


def with_demo_bank(settings: Settings) -> Settings:
    """``settings`` with ``[banks.<BRANCH_CODE>]`` (the demo bank: its BIN, its key domain)
    unless configured already."""
    from devstack.bank import DEMO_BIN
    from issuance.settings import BankSettings

    if BRANCH_CODE in settings.banks:
        return settings
    conf = BankSettings(key_domain=DEMO_BANK_DOMAIN, bins=(DEMO_BIN,))
    return settings.model_copy(update={"banks": {**settings.banks, BRANCH_CODE: conf}})


def ensure_bank_keys(settings: Settings) -> list[str]:
    """The demo bank's issuer master keys in its key domain, imported by the key ceremony from
    components the (throwaway) bank side makes, unless present. Returns the labels imported."""
    from cardspec.keyscheme import Algorithm
    from devstack.bank import IMK_SLOTS, imk_components
    from hsm import ceremony
    from hsm.pkcs11 import open_token

    conf = settings.banks[BRANCH_CODE]
    alg = Algorithm(settings.issuer.card_algorithm)
    token = open_token(hsm_config(settings))
    if conf.key_version in ceremony.bank_versions(token, conf.key_domain, alg):
        return []
    done = []
    for slot in IMK_SLOTS:
        _, comps, kcvs = imk_components(alg)
        info = ceremony.import_bank_master(token, conf.key_domain, slot, comps, kcvs, alg,
                                           conf.key_version)  # fmt: skip
        done.append(info.label)
    return done


def open_demo_accounts(
    txn: Callable[[Callable[[Session], Any]], Any], settings: Settings, operator: Actor
) -> int:
    """The bank data exchange of the demo: the request file (product), the bank's answer (the
    throwaway bank side, :mod:`devstack.bank`), the response loaded (product). Both files are
    kept under ``<data_dir>/bank/``; the bank's books are its earlier responses kept there (a
    replacement card keeps its account: same PAN, next PAN sequence number). Returns the
    accounts loaded."""
    from devstack.bank import BankLedger, answer_request
    from issuance import bank

    request = txn(lambda s: bank.request_file(s, settings, BRANCH_CODE, operator))
    folder = settings.data_dir / "bank" / BRANCH_CODE
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{request.request_id}.req").write_text(request.text, encoding="utf-8")
    books = BankLedger.of_responses(
        p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.rsp"))
    )
    response = answer_request(request.text, settings.banks[BRANCH_CODE].bins[0], ledger=books)
    result = txn(lambda s: bank.load_response(s, settings, BRANCH_CODE, response, operator,
                                              file_name=f"{request.request_id}.rsp"))  # fmt: skip
    return int(result.loaded)


@dataclass
class DemoResult:
    batch_name: str
    residents: int
    good: int
    issued: int
    spool_dir: Path
    cards_dir: Path
    report_text: Path
    report_png: Path
    report: Any
    activated: str | None = None
    verify_command: str | None = None
    #: the console logins (:func:`ensure_logins`)
    logins: list[tuple[str, str, str | None]] = field(default_factory=list)


def run_demo(
    settings: Settings, residents: int = 8, readers: int = 4, algorithm: str | None = None
) -> DemoResult:
    """The end-to-end demo (see the module docstring), with Rich progress bars. ``algorithm``
    (``3des``, ``sm4``, ``aes``): the card key algorithm of this run's cards, else ``[issuer]
    card_algorithm``; ``sm4`` makes third-generation cards (FCI ``86 01 03``, an SM2 key pair
    and certificate on the chip) and needs an HSM with SM4 (:func:`ensure_hsm`)."""
    from rich.console import Console

    from issuance import migrations
    from issuance.batches.pipeline import BatchInterrupted, RunOptions
    from issuance.batches.report import build_report, write_report
    from issuance.batches.selection import BatchFilter, create_batch
    from issuance.batches.shipping import issue_card, ship_batch
    from issuance.db import make_engine, make_sessionmaker, transaction
    from issuance.models import BatchItem, BatchStage, Card
    from yikatong.progress import RichProgress
    from yikatong.wiring import runner_for

    if algorithm is not None:
        settings = with_card_algorithm(settings, algorithm)
    settings = with_demo_bank(settings)
    sm4 = settings.issuer.card_algorithm == "sm4"
    console = Console()
    ensure_hsm(settings)
    imported = ensure_bank_keys(settings)
    engine = make_engine(settings)
    migrations.upgrade(engine)
    factory = make_sessionmaker(engine)
    console.rule("[bold]Yikatong demo")
    console.print(f"data directory {settings.data_dir}  database {settings.database_url}")
    console.print(f"card keys {settings.issuer.card_algorithm} (HSM module "
                  f"{settings.hsm.module.name}, vendor table {settings.hsm.vendor})")  # fmt: skip

    def txn(fn: Callable[[Session], Any]) -> Any:
        with transaction(factory) as s:
            return fn(s)

    txn(lambda s: ensure_branch(s, settings))
    actors = txn(ensure_staff)
    logins = txn(ensure_logins)
    with RichProgress(console) as progress:
        progress.start("intake", residents)
        tick = lambda: progress.advance("intake")  # noqa: E731
        made = txn(lambda s: create_residents(s, settings, actors, residents, on_resident=tick))
    console.print(
        f"{len(made)} residents applied with their photos (receive → process → review → "
        "approve by three different staff members); card numbers allocated"
    )
    if imported:
        console.print(f"the bank's issuer master keys imported by key ceremony into its own key "
                      f"domain: {', '.join(imported)}")  # fmt: skip
    operator = actors["demo-operator"]
    opened = open_demo_accounts(txn, settings, operator)
    console.print(f"bank: request file sent, response loaded: {opened} account(s) opened "
                  f"(PAN, PSN, expiry from the bank)")  # fmt: skip
    name = f"demo-{datetime.now():%Y%m%d-%H%M%S}"
    batch = txn(lambda s: create_batch(s, operator, name, BatchFilter(region_code="3301")))
    console.print(f"batch [bold]{name}[/bold]: {batch.card_count} card(s) selected")
    try:
        with RichProgress(console) as progress, runner_for(
            settings, batch.id, engine=engine, actor=operator.via(Channel.SYSTEM),
            progress=progress, options=RunOptions(readers=readers),
        ) as runner:  # fmt: skip
            try:
                summary = runner.run()
            except KeyboardInterrupt:
                runner.stop.set()
                raise
    except (KeyboardInterrupt, BatchInterrupted):
        engine.dispose()
        console.print(f"[yellow]demo interrupted.[/yellow] Finish the batch with:\n"
                      f"  ykt batch resume {name}")  # fmt: skip
        raise
    console.print(
        f"production: {summary.checked} good card(s) on {summary.stations} virtual readers, "
        f"{summary.spoiled} spoiled, {summary.apdus} APDUs in {summary.seconds:.1f} s"
    )
    with RichProgress(console) as progress:
        progress.start("ship", summary.checked)
        shipped = ship_batch(txn, settings, batch.id, BRANCH_CODE, operator,
                             on_card=lambda: progress.advance("ship"))  # fmt: skip
    teller = actors["demo-teller"]
    shipped_numbers = (
        sa.select(Card.card_number)
        .join(BatchItem, BatchItem.card_id == Card.id)
        .where(BatchItem.batch_id == batch.id, BatchItem.stage == BatchStage.SHIPPED)
    )
    numbers = txn(lambda s: list(s.scalars(shipped_numbers)))
    for number in numbers:

        def collect(s: Session, number: str = number) -> None:
            issue_card(s, number, teller)

        txn(collect)
    console.print(f"{shipped.shipped} card(s) shipped to {BRANCH_CODE}; {len(numbers)} "
                  "collected by their holders (issued, still sealed until activation)")  # fmt: skip
    activated = verify_cmd = None
    if numbers:
        activated = numbers[0]
        client_id, secret = txn(lambda s: activate_for_demo(s, settings, activated, teller))
        console.print(f"card {activated} activated at the bank by its holder; a demo hospital "
                      f"({HOSPITAL_CODE}) has API client credentials")  # fmt: skip
        verify_cmd = (f"YKT_CLIENT_ID={client_id} YKT_CLIENT_SECRET={secret} "
                      f"ykt verify --card-number {activated}")  # fmt: skip
        if sm4:  # the chip's SM2 signature over the challenge too (second proof)
            verify_cmd += " --sm2"
    report = txn(lambda s: build_report(s, batch.id))
    reports_dir = settings.data_dir / "reports"
    text, png = write_report(report, reports_dir)
    console.print(report.text())
    engine.dispose()
    console.rule("[bold]where things are")
    console.print(f"card faces (PNG + PDF): {settings.spool_dir}")
    console.print(f"card chips (emulator images): {settings.cards_dir}")
    console.print(f"batch report: {text}")
    console.print(f"batch chart:  {png}")
    print_logins(console, settings, logins)
    if verify_cmd is not None:
        console.rule("[bold]check a card as a hospital does")
        console.print("in one shell, the API:\n  ykt serve")
        console.print("in another, verify the activated card (challenge, INTERNAL AUTHENTICATE "
                      "checked in the HSM, status"
                      + ("; the chip's SM2 signature and card certificate" if sm4 else "")
                      + "):")  # fmt: skip
        console.print(f"  {verify_cmd}", soft_wrap=True, highlight=False)
    return DemoResult(name, len(made), report.good, len(numbers), settings.spool_dir,
                      settings.cards_dir, text, png, report, activated, verify_cmd,
                      logins)  # fmt: skip


def print_logins(
    console: Any, settings: Settings, logins: list[tuple[str, str, str | None]]
) -> None:
    """The web console's address and the demo staff's logins (new passwords shown once)."""
    from rich.table import Table

    console.print(f"web console:  http://{settings.api.host}:{settings.api.port}/console "
                  "(start it with: ykt serve)", soft_wrap=True)  # fmt: skip
    table = Table("user", "role", "password", title="console logins (new passwords shown once)",
                  box=None)  # fmt: skip
    for username, role, password in logins:
        table.add_row(username, role, password or "(set earlier; ykt db set-password "
                      f"{username} --as demo-admin gives a new one)")  # fmt: skip
    console.print(table)


def activate_for_demo(
    session: Session, settings: Settings, card_number: str, teller: Actor
) -> tuple[str, str]:
    """The holder of ``card_number`` activates it at the bank; a demo hospital (created once)
    gets fresh client credentials. Returns ``(client_id, client_secret)``."""
    from issuance import services
    from issuance.services import credentials
    from issuance.services.cards import activate_card
    from issuance.services.common import find_card

    card = find_card(session, card_number=card_number)
    activate_card(session, card.id, teller)
    agency = session.scalars(sa.select(Agency).where(Agency.code == HOSPITAL_CODE)).first()
    if agency is None:
        agency = services.create_agency(
            session, HOSPITAL_CODE, "西湖区示例医院", AgencyKind.HOSPITAL, "330106"
        )
    new = credentials.register_agency_client(session, agency)
    assert new.client_secret is not None
    return new.client_id, new.client_secret
