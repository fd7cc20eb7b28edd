"""The production line printing on a real cupsd (``[printer] backend = "cups"``, started by
the test with a CR80 card queue): a card is ``printed`` only once CUPS reports its job
completed, the CUPS job id is on the item, each job reaches the backend as a 2-page CR80 PDF,
and the quality check reads the face code from the image that was sent."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from batch_helpers import HsmRoot, assert_batch_invariants, batch_settings, hsm_root, populate
from pypdf import PdfReader

from devstack.cupsd import TemporaryCups
from issuance.db import make_engine, make_sessionmaker, transaction
from issuance.models import AuditEvent, BatchItem
from printers.cups import CupsPrinter

pytestmark = [pytest.mark.pcsc, pytest.mark.cups]

CR80_PT = (85.60 / 25.4 * 72, 53.98 / 25.4 * 72)


@pytest.fixture(scope="module")
def cupsd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TemporaryCups]:
    with TemporaryCups(tmp_path_factory.mktemp("cups")) as server:
        yield server


@pytest.fixture(scope="module")
def cups_hsm(tmp_path_factory: pytest.TempPathFactory) -> HsmRoot:
    return hsm_root(tmp_path_factory.mktemp("cups-hsm"))


def test_batch_prints_on_cups_and_waits_for_each_job(
    tmp_path: Path, fresh_db_url: str, cups_hsm: HsmRoot, cupsd: TemporaryCups
) -> None:
    extra = {"YKT_PRINTER__BACKEND": "cups", "YKT_PRINTER__CUPS_SERVER": cupsd.server,
             "YKT_PRINTER__CUPS_QUEUE": cupsd.queue}  # fmt: skip
    settings = batch_settings(tmp_path / "data", fresh_db_url, cups_hsm, extra)
    assert settings.printer.backend == "cups"
    engine = make_engine(settings)
    pop = populate(engine, settings, 3, name="cups")
    from issuance.batches.pipeline import RunOptions
    from yikatong.wiring import runner_for

    with runner_for(settings, pop.batch_id, engine=engine,
                    options=RunOptions(readers=2)) as runner:  # fmt: skip
        assert isinstance(runner.printer, CupsPrinter)
        summary = runner.run()
    assert summary.finished and summary.checked == 3 and summary.spoiled == 0
    printer = CupsPrinter(cupsd.server, cupsd.queue)
    with transaction(make_sessionmaker(engine)) as s:
        assert_batch_invariants(s, settings, pop.batch_id, pop.card_numbers)
        refs = list(s.scalars(sa.select(BatchItem.print_ref).where(
            BatchItem.batch_id == pop.batch_id)))  # fmt: skip
        states = list(s.scalars(sa.select(AuditEvent.details).where(
            AuditEvent.action == "batch_item.print")))  # fmt: skip
    assert all(r and r.isdigit() for r in refs) and len(set(refs)) == 3
    assert [json.loads(d)["state"] for d in states] == ["completed"] * 3
    for ref in refs:
        assert ref is not None and printer.job_state(int(ref)) == "completed"
        pdf = cupsd.capture_dir / f"job-{ref}.pdf"
        assert pdf.exists(), cupsd.captured()
        pages = PdfReader(pdf).pages
        assert len(pages) == 2
        assert abs(float(pages[0].mediabox.width) - CR80_PT[0]) <= 1
    # the back images the quality check decoded (the printer has no spool file)
    assert len(list((settings.data_dir / "proofs").glob("*.back.png"))) == 3
    engine.dispose()
