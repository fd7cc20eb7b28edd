"""The process that runs *inside* an isolated network + mount namespace (started by
:class:`readers.virtual.pcscd.VirtualReaderStack` through ``unshare``).

Design notes: ``docs/design/readers.md`` (section ``readers.virtual.server``).
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import json
import logging
import os
import signal
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cardspec.reader import CardHandler
from readers.virtual.layout import StackLayout
from readers.virtual.vpcd import VpcdSlot

log = logging.getLogger("readers.virtual.server")

CardFactory = Callable[[Path], CardHandler]

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent exits (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: rely on the explicit stop
        pass


def resolve_factory(spec: str) -> CardFactory:
    """``"package.module:attr.attr"`` -> the callable (e.g. ``cardspec.emulator:Card.load``)."""
    module_name, _, attr_path = spec.partition(":")
    if not module_name or not attr_path:
        raise ValueError(f"card factory must look like 'module:callable', not {spec!r}")
    obj: Any = importlib.import_module(module_name)
    for part in attr_path.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"card factory {spec!r} is not callable")
    return obj


class CardServer:
    """pcscd + the card slots of one isolated stack."""

    def __init__(self, layout: StackLayout, factory: CardFactory, *, pcscd: str) -> None:
        self.layout = layout
        self.factory = factory
        self.pcscd_path = pcscd
        self.slots = [
            VpcdSlot(port, name=name)
            for port, name in zip(layout.ports(), layout.reader_names(), strict=True)
        ]
        self.images: list[str | None] = [None] * layout.readers
        self.pcscd: subprocess.Popen[bytes] | None = None
        self._slot_locks = [threading.Lock() for _ in self.slots]
        self.stopping = threading.Event()

    # --- namespace and pcscd ---------------------------------------------------------------

    def enter_namespace(self) -> None:
        """Loopback up, private /run/pcscd (the namespaces themselves come from unshare)."""
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        self.layout.pcscd_dir.mkdir(parents=True, exist_ok=True)
        Path("/run/pcscd").mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "--bind", str(self.layout.pcscd_dir), "/run/pcscd"], check=True)
        os.environ["PCSCLITE_CSOCK_NAME"] = str(self.layout.csock)

    def start_pcscd(self) -> None:
        logf = open(self.layout.pcscd_log, "ab")  # noqa: SIM115 - owned by the child
        self.pcscd = subprocess.Popen(
            [self.pcscd_path, "--foreground", "-c", str(self.layout.conf_dir)],
            stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )  # fmt: skip
        logf.close()

    def wait_readers(self, timeout: float) -> None:
        """Poll SCardListReaders until pcscd lists every reader of the stack."""
        from readers.pcsc import PcscError, list_readers

        wanted = set(self.layout.reader_names())
        deadline = time.monotonic() + timeout
        last = "pcscd not answering yet"
        while time.monotonic() < deadline:
            if self.pcscd is not None and self.pcscd.poll() is not None:
                raise RuntimeError(f"pcscd exited with status {self.pcscd.returncode}")
            try:
                found = set(list_readers())
                if wanted <= found:
                    return
                last = f"readers so far: {sorted(found)}"
            except PcscError as exc:
                last = str(exc)
            time.sleep(0.05)
        raise TimeoutError(f"readers not visible after {timeout:.0f} s ({last})")

    # --- cards -----------------------------------------------------------------------------

    def _reader_state(self, slot: int) -> bool | None:
        """True if pcscd sees a card in ``slot``, False if empty, None if it cannot tell."""
        from readers.pcsc import PcscError, card_present

        try:
            return card_present(self.layout.reader_name(slot))
        except PcscError:
            return None

    def _wait_presence(self, slot: int, present: bool, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._reader_state(slot) is present:
                return
            time.sleep(0.02)
        what = "present" if present else "absent"
        raise TimeoutError(f"pcscd did not see the card {what} in slot {slot} within {timeout} s")

    def _check_slot(self, slot: int) -> int:
        if not 0 <= slot < len(self.slots):
            raise ValueError(f"no slot {slot} (slots 0..{len(self.slots) - 1})")
        return slot

    def insert(self, slot: int, image: str, *, wait: bool = True, timeout: float = 10.0) -> None:
        self._check_slot(slot)
        card = self.factory(Path(image))  # fails before touching the slot
        with self._slot_locks[slot]:
            if self.slots[slot].card is not None:
                self._remove_locked(slot, wait=wait, timeout=timeout)
            self.slots[slot].insert(card)
            self.images[slot] = image
            if wait:
                if not self.slots[slot].wait_connected(timeout):
                    raise TimeoutError(f"slot {slot}: vpcd did not accept the card")
                self._wait_presence(slot, True, timeout)

    def _remove_locked(self, slot: int, *, wait: bool, timeout: float) -> None:
        self.slots[slot].eject()
        self.images[slot] = None
        if wait:
            self._wait_presence(slot, False, timeout)

    def remove(self, slot: int, *, wait: bool = True, timeout: float = 10.0) -> None:
        self._check_slot(slot)
        with self._slot_locks[slot]:
            self._remove_locked(slot, wait=wait, timeout=timeout)

    def slot_status(self, slot: int) -> dict[str, Any]:
        s = self.slots[slot]
        return {
            "slot": slot,
            "reader": s.name,
            "port": s.port,
            "image": self.images[slot],
            "connected": s.connected,
            "apdus": s.apdus,
        }

    def status(self) -> list[dict[str, Any]]:
        return [self.slot_status(i) for i in range(len(self.slots))]

    # --- control socket --------------------------------------------------------------------

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "ping":
            return {"ok": True, "pid": os.getpid(), "readers": self.layout.reader_names()}
        if op == "status":
            return {"ok": True, "slots": self.status()}
        if op == "insert":
            slot = int(request["slot"])
            self.insert(slot, str(request["image"]), wait=bool(request.get("wait", True)))
            return {"ok": True, "slot": self.slot_status(slot)}
        if op == "remove":
            slot = int(request["slot"])
            self.remove(slot, wait=bool(request.get("wait", True)))
            return {"ok": True, "slot": self.slot_status(slot)}
        if op == "shutdown":
            self.stopping.set()
            return {"ok": True}
        raise ValueError(f"unknown op {op!r}")

    def serve_control(self) -> socketserver.ThreadingUnixStreamServer:
        server_self = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                for line in self.rfile:
                    try:
                        reply = server_self.handle(json.loads(line))
                    except Exception as exc:
                        reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                    self.wfile.write(json.dumps(reply).encode() + b"\n")
                    self.wfile.flush()

        path = self.layout.control_sock
        path.unlink(missing_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.unlink(missing_ok=True)
        srv = socketserver.ThreadingUnixStreamServer(str(tmp), Handler)
        srv.daemon_threads = True
        os.replace(tmp, path)  # appears only when ready
        threading.Thread(target=srv.serve_forever, name="control", daemon=True).start()
        return srv

    # --- lifecycle -------------------------------------------------------------------------

    def stop(self) -> None:
        for s in self.slots:
            s.stop(timeout=1.0)
        if self.pcscd is not None and self.pcscd.poll() is None:
            self.pcscd.terminate()
            try:
                self.pcscd.wait(3)
            except subprocess.TimeoutExpired:
                self.pcscd.kill()
                self.pcscd.wait(3)
        self.layout.control_sock.unlink(missing_ok=True)


def _watch_parent(fd: int, stopping: threading.Event) -> None:
    """Stop when the parent process exits (its end of the pipe closes)."""
    while True:
        try:
            if not os.read(fd, 64):
                break
        except InterruptedError:
            continue
        except OSError:
            break
    log.info("parent process gone: stopping")
    stopping.set()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--readers", type=int, required=True)
    parser.add_argument("--factory", required=True)
    parser.add_argument("--pcscd", default="/usr/sbin/pcscd")
    parser.add_argument("--startup-timeout", type=float, default=15.0)
    parser.add_argument(
        "--parent-fd", type=int, default=None,
        help="read end of a pipe held by the parent process: EOF means the parent is gone",
    )  # fmt: skip
    args = parser.parse_args(argv)

    if args.parent_fd is None:
        die_with_parent()  # PDEATHSIG follows the parent *thread*: only without a pipe
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )  # fmt: skip
    layout = StackLayout(args.run_dir, args.readers)
    server = CardServer(layout, resolve_factory(args.factory), pcscd=args.pcscd)

    def _terminate(signum: int, _frame: object) -> None:
        server.stopping.set()

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    if args.parent_fd is not None:
        threading.Thread(
            target=_watch_parent, args=(args.parent_fd, server.stopping), daemon=True
        ).start()
    control = None
    try:
        server.enter_namespace()
        for s in server.slots:
            s.start()
        server.start_pcscd()
        server.wait_readers(args.startup_timeout)
        control = server.serve_control()
        log.info("ready: %d readers, pcscd pid %s", layout.readers,
                 server.pcscd.pid if server.pcscd else None)  # fmt: skip
        while not server.stopping.wait(0.5):
            if server.pcscd is not None and server.pcscd.poll() is not None:
                log.error("pcscd exited with status %s", server.pcscd.returncode)
                return 1
        return 0
    except Exception:
        log.exception("virtual reader stack failed")
        return 1
    finally:
        if control is not None:
            control.shutdown()
            control.server_close()
        server.stop()
        log.info("stopped")


if __name__ == "__main__":
    sys.exit(main())
