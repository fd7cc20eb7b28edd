"""Fixtures of the reliability suite. The API test helpers (``tests/api``: SoftHSM token with
known master keys, staff, cards, the ``ykt serve`` subprocess helper) are importable here."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

API_TESTS = Path(__file__).resolve().parent.parent / "api"
if str(API_TESTS) not in sys.path:
    sys.path.insert(0, str(API_TESTS))

from api_helpers import Hsm, make_hsm  # noqa: E402


@pytest.fixture(scope="session")
def api_hsm(tmp_path_factory: pytest.TempPathFactory) -> Hsm:
    return make_hsm(tmp_path_factory.mktemp("reliability-hsm"))
