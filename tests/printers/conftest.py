"""Fixtures of the printers tests: a card face with a real processed photo."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from issuance.photos import process_photo
from printers.faces import CardFace
from yikatong.settings import PhotoSettings

SAMPLE = Path(__file__).resolve().parents[2] / "issuance" / "sample_data" / "photos"


@pytest.fixture(scope="session")
def photo_jpeg() -> bytes:
    return process_photo((SAMPLE / "resident-01.jpg").read_bytes(), PhotoSettings()).jpeg


@pytest.fixture
def face(photo_jpeg: bytes) -> CardFace:
    return CardFace(
        name="张晓明",
        ssn="33010619900101123X",
        card_number="A00000019",
        issue_date=date(2024, 5, 3),
        photo_jpeg=photo_jpeg,
        issuer_name="杭州市人力资源和社会保障局",
        bank_name="中国工商银行",
        region="杭州市西湖区",
    )
