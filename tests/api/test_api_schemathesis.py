"""schemathesis over the whole OpenAPI document: no server error, no response off the schema
(status codes, content types and bodies), in both generation modes: POSITIVE (valid input)
and NEGATIVE (malformed input: wrong types, missing fields, bad formats). It runs once per
principal kind, so routes are explored beyond the scope refusal: a staff supervisor (wide
scopes), a bank and a hospital (``YKT_SCHEMATHESIS_WHO=all``: every staff role and agency
kind). ``YKT_SCHEMATHESIS_EXAMPLES`` raises the number of examples per operation (``make
reliability`` runs it high)."""

from __future__ import annotations

import os
from pathlib import Path

import hypothesis
import pytest
import schemathesis
from api_helpers import ApiEnv
from hypothesis import HealthCheck, Phase
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from issuance.models import StaffRole
from yikatong.settings import Settings, load_settings

pytestmark = pytest.mark.softhsm
EXAMPLES = int(os.environ.get("YKT_SCHEMATHESIS_EXAMPLES", "8"))
#: ``YKT_SCHEMATHESIS_WHO=all``: every staff role and agency kind of the fixtures
ALL = [str(r) for r in StaffRole if r != StaffRole.SYSTEM] + ["hospital", "bank", "selfservice"]
WHO = ALL if os.environ.get("YKT_SCHEMATHESIS_WHO") == "all" else ["supervisor", "bank", "hospital"]
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # refusals must not turn into 429 halfway through the run
    return load_settings(
        environ={"YKT_DATA_DIR": str(tmp_path), "YKT_API__AUTH_FAILURES_PER_MINUTE": "1000000"}
    )


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("who", WHO)
def test_schemathesis_finds_no_server_error_and_nothing_off_schema(
    api_env: ApiEnv, who: str, mode: GenerationMode
) -> None:
    api_env.new_card()
    schema = schemathesis.openapi.from_asgi("/openapi.json", api_env.client.app)
    headers = api_env.auth(who)
    tested = skipped = 0
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:

        @hypothesis.settings(
            max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
            suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate],
        )  # fmt: skip
        @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
        def run(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=headers, checks=CHECKS)

        try:
            run()
        except Unsatisfiable:
            # nothing to make malformed (no parameters, no body): the positive run covers it
            assert mode is GenerationMode.NEGATIVE, operation.label
            skipped += 1
            continue
        except Exception as exc:  # every operation runs; all failures are reported together
            failures.append(f"{operation.label}: {exc}")
        tested += 1
    assert not failures, "\n\n".join(failures)
    assert len(operations) >= 35 and tested + skipped == len(operations)
    assert skipped <= 4, skipped  # only operations without any input to malform
