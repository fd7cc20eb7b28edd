"""Virtual card readers: the project's card emulator behind vsmartcard's vpcd, in an isolated
pcscd (own network + mount namespace), driven like real PC/SC readers.

* :class:`VirtualReaderStack` — start/stop an isolated pcscd with N vpcd readers, insert and
  remove card images (:meth:`~VirtualReaderStack.insert`), ``environ`` for PC/SC clients.
* :class:`StackControl` — the same insert/remove/status from another process.
* :mod:`readers.virtual.vpcd` — the vpcd card-side protocol (:class:`VpcdSlot`).
"""

from __future__ import annotations

from readers.virtual.layout import MAX_READERS, StackLayout, short_run_dir
from readers.virtual.pcscd import (
    DEFAULT_CARD_FACTORY,
    SlotStatus,
    StackControl,
    VirtualReaderError,
    VirtualReaderStack,
)
from readers.virtual.vpcd import VpcdControl, VpcdSlot

__all__ = [
    "DEFAULT_CARD_FACTORY",
    "MAX_READERS",
    "SlotStatus",
    "StackControl",
    "StackLayout",
    "VirtualReaderError",
    "VirtualReaderStack",
    "VpcdControl",
    "VpcdSlot",
    "short_run_dir",
]
