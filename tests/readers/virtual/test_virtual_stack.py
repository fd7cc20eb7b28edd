"""The virtual reader stack end to end: isolated pcscd + vpcd + card server, driven through
pyscard (readers.pcsc) and through opensc-tool as an independent PC/SC client."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from virtual_fakecard import ATR
from virtual_helpers import DF_NAME, fake_image, make_stack, stack_processes

from readers.pcsc import (
    NoCardError,
    NoServiceError,
    PcscReader,
    ReaderUnavailableError,
    list_readers,
)
from readers.virtual import VirtualReaderError, VirtualReaderStack

pytestmark = pytest.mark.pcsc

SELECT_2F01 = bytes.fromhex("00A40000022F01")


def read_2f01(reader: PcscReader, length: int) -> bytes:
    assert reader.transmit(SELECT_2F01) == b"\x90\x00"
    resp = reader.transmit(bytes([0x00, 0xB0, 0x00, 0x00, length]))
    assert resp[-2:] == b"\x90\x00"
    return resp[:-2]


def test_two_readers_are_listed(stack: VirtualReaderStack) -> None:
    assert stack.reader_names() == ["Virtual PCD 0 00 00", "Virtual PCD 0 00 01"]
    assert list_readers(stack.csock) == stack.reader_names()
    assert stack.environ == {"PCSCLITE_CSOCK_NAME": str(stack.csock)}
    assert stack.csock.is_socket()
    assert [s.present for s in stack.status()] == [False, False]


def test_apdus_reach_the_card_and_back(stack: VirtualReaderStack, image_a: Path) -> None:
    st = stack.insert(0, image_a)
    assert st.connected and st.image == str(image_a.resolve())
    reader = PcscReader(stack.reader_name(0), csock=stack.csock)
    try:
        assert reader.connect() == ATR
        assert reader.protocol is not None
        # SELECT by DF name without Le: the card answers 61xx, the reader fetches the FCI.
        fci = reader.transmit(bytes([0x00, 0xA4, 0x04, 0x00, len(DF_NAME)]) + DF_NAME)
        expected = b"\x6f" + bytes([len(DF_NAME) + 2, 0x84, len(DF_NAME)]) + DF_NAME
        assert fci == expected + b"\x90\x00"
        # EF 0005 under that DF holds the content reversed; Le too big -> 6Cxx -> corrected.
        assert reader.transmit(bytes.fromhex("00A4000002 0005")) == b"\x90\x00"
        resp = reader.transmit(bytes.fromhex("00B00000FF"))
        assert resp == b"card A: hello"[::-1] + b"\x90\x00"
        # Without automatic handling the raw status words come back.
        raw = PcscReader(stack.reader_name(0), csock=stack.csock, auto_get_response=False)
        with raw:
            assert raw.transmit(bytes.fromhex("00A4000002 0005"))[-2:] == b"\x90\x00"
            assert raw.transmit(bytes.fromhex("00B00000FF")) == bytes([0x6C, 13])
        assert read_2f01(reader, 13) == b"card A: hello"
    finally:
        reader.close()
    assert stack.status()[0].apdus >= 8


def test_transaction_groups_apdus(stack: VirtualReaderStack, image_a: Path) -> None:
    stack.insert(1, image_a)
    with PcscReader(stack.reader_name(1), csock=stack.csock) as reader:
        with reader.transaction():
            first = reader.transmit(bytes.fromhex("80CA000004"))
            with reader.transaction():  # nested: covered by the outer one
                second = reader.transmit(bytes.fromhex("80CA000004"))
        assert int.from_bytes(second[:4], "big") == int.from_bytes(first[:4], "big") + 1
        # Shared mode + SCARD_LEAVE_CARD: a second client sees the same powered card session.
        with PcscReader(stack.reader_name(1), csock=stack.csock) as other:
            third = other.transmit(bytes.fromhex("80CA000004"))
        assert int.from_bytes(third[:4], "big") == int.from_bytes(second[:4], "big") + 1


def test_insert_and_remove_are_seen(
    stack: VirtualReaderStack, image_a: Path, image_b: Path
) -> None:
    reader = PcscReader(stack.reader_name(0), csock=stack.csock)
    with pytest.raises(NoCardError) as empty:
        reader.connect()
    assert empty.value.code == 0x8010000C and empty.value.reader == stack.reader_name(0)

    stack.insert(0, image_a)
    reader.connect()
    assert read_2f01(reader, 13) == b"card A: hello"

    stack.remove(0)
    assert stack.status()[0].present is False
    with pytest.raises(NoCardError):
        reader.transmit(SELECT_2F01)
    with pytest.raises(NoCardError):
        reader.connect()

    stack.insert(0, image_b)
    reader.connect()
    assert read_2f01(reader, 31) == b"card B: a longer content than A"

    # Inserting into an occupied slot swaps the card: the old session is gone.
    stack.insert(0, image_a)
    with pytest.raises(NoCardError):
        reader.transmit(SELECT_2F01)
    reader.connect()
    assert read_2f01(reader, 13) == b"card A: hello"
    reader.close()


def test_bad_requests_are_refused(stack: VirtualReaderStack, tmp_path: Path) -> None:
    with pytest.raises(VirtualReaderError, match="no slot 5"):
        stack.insert(5, tmp_path / "missing.json")
    with pytest.raises(VirtualReaderError, match=r"missing\.json"):
        stack.insert(0, tmp_path / "missing.json")
    assert stack.status()[0].present is False
    with pytest.raises(ReaderUnavailableError):
        PcscReader("No Such Reader 00 00", csock=stack.csock).connect()


def test_six_readers_in_one_stack(tmp_path: Path) -> None:
    run = tmp_path / "six"
    with make_stack(run, 6) as stack:
        # pcscd lists readers in the order it read its config directory (readdir order).
        assert sorted(list_readers(stack.csock)) == stack.reader_names()
        assert len(stack.reader_names()) == 6
        assert sorted(p.name for p in (run / "drivers").iterdir()) == [
            "libifdvpcd-1.so",
            "libifdvpcd-2.so",
        ]
        images = {
            slot: fake_image(tmp_path / f"c{slot}.json", f"card in slot {slot:02d}".encode())
            for slot in (0, 3, 5)
        }
        for slot, image in images.items():
            stack.insert(slot, image)
        for slot in (0, 3, 5):
            with PcscReader(stack.reader_name(slot), csock=stack.csock) as reader:
                assert read_2f01(reader, 16) == f"card in slot {slot:02d}".encode()
        with pytest.raises(NoCardError):
            PcscReader(stack.reader_name(4), csock=stack.csock).connect()
    assert stack_processes(run) == []


def test_two_stacks_run_at_once(tmp_path: Path, image_a: Path, image_b: Path) -> None:
    with make_stack(tmp_path / "s1", 2) as one, make_stack(tmp_path / "s2", 2) as two:
        # Same reader names and vpcd ports, isolated from each other.
        assert one.reader_names() == two.reader_names()
        one.insert(0, image_a)
        two.insert(0, image_b)
        with (
            PcscReader(one.reader_name(0), csock=one.csock) as r1,
            PcscReader(two.reader_name(0), csock=two.csock) as r2,
        ):
            assert read_2f01(r1, 13) == b"card A: hello"
            assert read_2f01(r2, 31) == b"card B: a longer content than A"
        two.remove(0)
        with PcscReader(one.reader_name(0), csock=one.csock) as r1:
            assert read_2f01(r1, 13) == b"card A: hello"
    assert stack_processes(tmp_path / "s1") == stack_processes(tmp_path / "s2") == []


def test_stack_runs_in_its_own_namespaces(stack: VirtualReaderStack) -> None:
    # vpcd listens on 0.0.0.0: only inside the stack's own network namespace.
    pcscd_pid = stack.pcscd_pid
    for pid in (stack.pid, pcscd_pid):
        for ns in ("net", "mnt"):
            assert os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}")
    assert os.readlink(f"/proc/{pcscd_pid}/ns/net") == os.readlink(f"/proc/{stack.pid}/ns/net")


def test_opensc_tool_is_an_independent_client(stack: VirtualReaderStack, image_a: Path) -> None:
    stack.insert(1, image_a)
    env = stack.client_env()
    listing = subprocess.run(
        ["opensc-tool", "-l"], env=env, capture_output=True, text=True, timeout=30, check=True
    ).stdout
    lines = {line.split(None, 2)[0]: line for line in listing.splitlines() if line[:1].isdigit()}
    assert "Virtual PCD 0 00 00" in lines["0"] and " No " in lines["0"]
    assert "Virtual PCD 0 00 01" in lines["1"] and " Yes " in lines["1"]
    out = subprocess.run(
        ["opensc-tool", "-r", "1", "-s", "00A4000002 2F01", "-s", "00B000000D"],
        env=env, capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    assert "SW1=0x90, SW2=0x00" in out
    assert b"card A: hello".hex(" ").upper() in out.upper()


def test_clean_shutdown_leaves_nothing(tmp_path: Path, image_a: Path) -> None:
    run = tmp_path / "down"
    stack = make_stack(run, 2).start()
    server_pid = stack.pid
    pcscd_pid = stack.pcscd_pid
    assert {server_pid, pcscd_pid} <= set(stack_processes(run))
    stack.insert(0, image_a)
    stack.stop()
    assert stack_processes(run) == []
    assert not (run / "control.sock").exists()
    with pytest.raises(NoServiceError):
        list_readers(stack.csock)
    stack.stop()  # idempotent


def test_failure_inside_the_block_still_stops(tmp_path: Path) -> None:
    run = tmp_path / "boom"
    with pytest.raises(KeyboardInterrupt), make_stack(run, 2):
        assert stack_processes(run) != []
        raise KeyboardInterrupt
    assert stack_processes(run) == []


def test_killed_server_takes_pcscd_down(tmp_path: Path) -> None:
    run = tmp_path / "kill"
    stack = make_stack(run, 2).start()
    assert stack.pid is not None
    os.kill(stack.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while stack_processes(run) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stack_processes(run) == []  # pcscd died with its parent (PR_SET_PDEATHSIG)
    stack.stop()


def test_startup_failure_names_the_logs(tmp_path: Path) -> None:
    run = tmp_path / "fail"
    stack = make_stack(run, 2, pcscd=Path("/bin/false"), startup_timeout=5.0)
    with pytest.raises(VirtualReaderError) as info:
        stack.start()
    assert "pcscd.log" in str(info.value) and "server.log" in str(info.value)
    assert "pcscd exited" in str(info.value)
    assert stack_processes(run) == []


def test_a_second_stack_in_the_same_dir_is_refused(stack: VirtualReaderStack) -> None:
    with pytest.raises(VirtualReaderError, match="already running"):
        VirtualReaderStack(stack.run_dir, 2).start()
    assert list_readers(stack.csock) == stack.reader_names()


def test_stack_started_in_a_short_lived_thread_survives_it(tmp_path: Path) -> None:
    run = tmp_path / "thread"
    started: list[VirtualReaderStack] = []
    worker = threading.Thread(target=lambda: started.append(make_stack(run, 2).start()))
    worker.start()
    worker.join()
    stack = started[0]
    try:
        time.sleep(0.3)
        assert stack.running
        assert list_readers(stack.csock) == stack.reader_names()
    finally:
        stack.stop()
    assert stack_processes(run) == []


def test_stack_goes_away_when_its_owner_is_killed(tmp_path: Path) -> None:
    run = tmp_path / "owner"
    code = (
        "import sys, time; sys.path.insert(0, sys.argv[1]);"
        "from virtual_helpers import make_stack; from pathlib import Path;"
        "make_stack(Path(sys.argv[2]), 2).start(); print('up', flush=True); time.sleep(60)"
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", code, str(Path(__file__).parent), str(run)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert owner.stdout is not None and owner.stdout.readline().strip() == "up"
        assert len(stack_processes(run)) >= 2
        owner.kill()
        owner.wait()
        deadline = time.monotonic() + 10
        while stack_processes(run) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stack_processes(run) == []
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
