"""APDUs per second through the real PC/SC stack: pyscard -> isolated pcscd -> vpcd -> the card
server -> the reference emulator, with 1 reader and with 4 readers in parallel (4 client
processes, and 4 threads in one process).

The APDU is SELECT of the social security DF by name with Le (case 4: 15 bytes in, the FCI
out) on a blank emulator card. ``emulator_in_process_per_s`` is the card side alone (the limit
the PC/SC path is measured against). Run alone: ``python -m bench.pcsc_apdu``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from cardspec.emulator import Card, blank_card
from cardspec.keyscheme import Algorithm
from cardspec.profile import SOCIAL_SECURITY_DF_NAME
from cardspec.reader import InProcessReader

SELECT = (
    bytes([0x00, 0xA4, 0x04, 0x00, len(SOCIAL_SECURITY_DF_NAME)]) + SOCIAL_SECURITY_DF_NAME + b"\0"
)


def _client(reader_name: str, csock: str, seconds: float) -> int:
    from readers.pcsc import PcscReader

    with PcscReader(reader_name, csock=csock) as reader:
        for _ in range(50):  # warm up
            reader.transmit(SELECT)
        done = 0
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            for _ in range(50):
                resp = reader.transmit(SELECT)
            if resp[-2:] != b"\x90\x00":
                raise RuntimeError(f"unexpected answer {resp[-2:].hex()}")
            done += 50
    return done


def _process_client(reader_name: str, csock: str, seconds: float, out: Any) -> None:
    out.put(_client(reader_name, csock, seconds))


def _in_processes(names: list[str], csock: str, seconds: float) -> float:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_process_client, args=(name, csock, seconds, queue)) for name in names
    ]
    for p in procs:
        p.start()
    counts = [queue.get(timeout=seconds + 60) for _ in procs]
    for p in procs:
        p.join()
    return sum(counts) / seconds


def _in_threads(names: list[str], csock: str, seconds: float) -> float:
    counts: list[int] = []
    threads = [
        threading.Thread(target=lambda n=name: counts.append(_client(n, csock, seconds)))
        for name in names
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / seconds


def _emulator_rate(image: Path, n: int = 20000) -> float:
    reader = InProcessReader(Card.load(image))
    reader.connect()
    start = time.perf_counter()
    for _ in range(n):
        reader.transmit(SELECT)
    return n / (time.perf_counter() - start)


def main() -> dict[str, Any]:
    from readers.virtual import VirtualReaderStack

    seconds = float(os.environ.get("BENCH_SECONDS", "3"))
    with tempfile.TemporaryDirectory(prefix="ykt-bench-") as tmp:
        image = Path(tmp) / "blank.json"
        blank_card(bytes(8), bytes(16), Algorithm.DES3, klk=bytes(16), path=image)
        with VirtualReaderStack(Path(tmp) / "pcsc", 4) as stack:
            for slot in range(4):
                stack.insert(slot, image)
            csock = str(stack.csock)
            names = stack.reader_names()
            one = _client(names[0], csock, seconds) / seconds
            four_procs = _in_processes(names, csock, seconds)
            four_threads = _in_threads(names, csock, seconds)
        limit = _emulator_rate(image)
    figures = {
        "apdus_per_s_1_reader": round(one),
        "apdus_per_s_4_readers_4_processes": round(four_procs),
        "apdus_per_s_4_readers_4_threads": round(four_threads),
        "emulator_in_process_per_s (limit)": round(limit),
        "ratio_1_reader_to_limit": round(one / limit, 3),
        "cores": os.cpu_count() or 0,
    }
    for key, value in figures.items():
        print(f"{key}: {value}")
    return figures


if __name__ == "__main__":
    main()
