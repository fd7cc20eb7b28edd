"""Fixtures for the virtual reader tests: a 2-reader stack with the small file card of
``virtual_fakecard`` (checked to leave no process behind) and two card images."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from virtual_helpers import fake_image, make_stack, stack_processes

from readers.virtual import VirtualReaderStack


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[VirtualReaderStack]:
    with make_stack(tmp_path / "pcsc", 2) as st:
        yield st
    assert stack_processes(tmp_path / "pcsc") == []


@pytest.fixture
def image_a(tmp_path: Path) -> Path:
    return fake_image(tmp_path / "a.json", b"card A: hello")


@pytest.fixture
def image_b(tmp_path: Path) -> Path:
    return fake_image(tmp_path / "b.json", b"card B: a longer content than A")
