"""schemathesis over the whole OpenAPI document: no server error, no response off the schema
(status codes, content types and bodies), with a staff token of broad scopes."""

from __future__ import annotations

from pathlib import Path

import hypothesis
import pytest
import schemathesis
from conftest import ApiEnv
from hypothesis import HealthCheck, Phase
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from issuance.settings import Settings, load_settings

pytestmark = pytest.mark.softhsm
EXAMPLES = 15
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


def test_schemathesis_finds_no_server_error_and_nothing_off_schema(api_env: ApiEnv) -> None:
    api_env.new_card()
    schema = schemathesis.openapi.from_asgi("/openapi.json", api_env.client.app)
    headers = api_env.auth("supervisor")
    tested = 0
    for result in schema.get_all_operations():
        operation = result.ok()

        @hypothesis.settings(
            max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
            suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate],
        )  # fmt: skip
        @hypothesis.given(case=operation.as_strategy())
        def run(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=headers, checks=CHECKS)

        run()
        tested += 1
    assert tested >= 28
