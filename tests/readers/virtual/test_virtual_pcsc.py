"""readers.pcsc: error mapping, Le correction, and how the pcscd is selected
(PCSCLITE_CSOCK_NAME is read once per process by libpcsclite; the module routes around it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cardspec.errors import CardSpecError
from readers.pcsc import (
    CSOCK_ENV,
    CardResetError,
    NoCardError,
    NoServiceError,
    PcscError,
    ReaderUnavailableError,
    ScardCode,
    SharingViolationError,
    _le_fixed,
    card_present,
    error_for,
    list_readers,
)
from readers.virtual import VirtualReaderStack


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (0x8010001D, NoServiceError),
        (0x80100009, ReaderUnavailableError),
        (0x8010000C, NoCardError),
        (0x80100069, NoCardError),
        (0x80100068, CardResetError),
        (0x8010000B, SharingViolationError),
        (0x80100001, PcscError),
        (0x12345678, PcscError),
    ],
)
def test_error_mapping_keeps_code_and_reader(code: int, cls: type[PcscError]) -> None:
    err = error_for(code - (1 << 32) if code & 0x80000000 else code, "boom", "Reader 00 00")
    assert type(err) is cls and isinstance(err, CardSpecError)
    assert err.code == code and err.reader == "Reader 00 00"
    assert str(err).startswith("Reader 00 00: boom")
    name = f"SCARD_{ScardCode(code).name}" if code in ScardCode._value2member_map_ else None
    assert (name or f"0x{code:08X}") in str(err)


def test_le_correction_for_each_case() -> None:
    assert _le_fixed(bytes.fromhex("00B00000"), 0x10) == bytes.fromhex("00B0000010")  # case 1
    assert _le_fixed(bytes.fromhex("00B00000FF"), 0x0D) == bytes.fromhex("00B000000D")  # case 2
    case3 = bytes.fromhex("00A4040002DF01")
    assert _le_fixed(case3, 0x20) == case3 + b"\x20"
    assert _le_fixed(case3 + b"\x00", 0x20) == case3 + b"\x20"  # case 4


def test_no_pcscd_is_a_clear_error(tmp_path: Path) -> None:
    before = os.environ.get(CSOCK_ENV)
    with pytest.raises(NoServiceError) as info:
        list_readers(tmp_path / "nothing.comm")
    assert str(tmp_path / "nothing.comm") in str(info.value)
    assert info.value.code == ScardCode.E_NO_SERVICE
    assert os.environ.get(CSOCK_ENV) == before  # the module gives the environment back


@pytest.mark.pcsc
def test_default_pcscd_follows_the_environment(
    stack: VirtualReaderStack, image_a: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CSOCK_ENV, str(stack.csock))
    assert list_readers() == stack.reader_names()
    assert card_present(stack.reader_name(0)) is False
    stack.insert(0, image_a)
    assert card_present(stack.reader_name(0)) is True
    monkeypatch.delenv(CSOCK_ENV)
    assert card_present(stack.reader_name(0), stack.csock) is True


@pytest.mark.pcsc
def test_libpcsclite_reads_the_socket_name_once_per_process(stack: VirtualReaderStack) -> None:
    """The finding readers.pcsc is built on, checked against the real library."""
    code = (
        "import os, sys\n"
        "from smartcard import scard\n"
        "os.environ['PCSCLITE_CSOCK_NAME'] = sys.argv[1] + '.absent'\n"
        "print(hex(scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)[0] & 0xFFFFFFFF))\n"
        "os.environ['PCSCLITE_CSOCK_NAME'] = sys.argv[1]\n"
        "print(hex(scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)[0] & 0xFFFFFFFF))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != CSOCK_ENV}
    out = subprocess.run(
        [sys.executable, "-c", code, str(stack.csock)],
        env=env, capture_output=True, text=True, timeout=30, check=True,
    ).stdout.split()  # fmt: skip
    # First context: no pcscd at the first name. Second: the new name is ignored (cached).
    assert out == ["0x8010001d", "0x8010001d"]
    # Set before the first context, the variable is honoured (what stack.environ is for).
    ok = subprocess.run(
        [sys.executable, "-c", "from smartcard import scard as s; "
         "print(s.SCardEstablishContext(s.SCARD_SCOPE_USER)[0])"],
        env={**env, **stack.environ}, capture_output=True, text=True, timeout=30, check=True,
    ).stdout.strip()  # fmt: skip
    assert ok == "0"


def test_link_directories_of_dead_processes_are_swept(stack: VirtualReaderStack) -> None:
    """The routing symlink's directory is removed at exit; a process killed (or leaving by
    ``os._exit``) cannot, so the next process sweeps directories whose process is gone and
    leaves the living ones alone."""
    import tempfile

    from readers import pcsc

    code = (
        "import os, sys\n"
        "from readers.pcsc import list_readers\n"
        "list_readers(sys.argv[1])\n"
        "print(os.getpid(), flush=True)\n"
        "os._exit(0)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(stack.csock)],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout.split()  # fmt: skip
    root = Path(tempfile.gettempdir())
    (left,) = root.glob(f"ykt-pcsc-{out[0]}-*")  # os._exit: its atexit did not run
    mine = Path(tempfile.mkdtemp(prefix=f"ykt-pcsc-{os.getpid()}-"))
    try:
        pcsc._sweep_stale_links()
        assert not left.exists()
        assert mine.is_dir()
    finally:
        mine.rmdir()
