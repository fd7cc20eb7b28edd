"""PC/SC adapter of the reader port (:class:`cardspec.reader.Reader`) over pyscard.

Design notes: ``docs/design/readers.md`` (section ``readers.pcsc``).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from enum import IntEnum
from pathlib import Path
from typing import Any

from cardspec.errors import CardSpecError

CSOCK_ENV = "PCSCLITE_CSOCK_NAME"
#: pcsc-lite's compiled-in socket (Debian): used when ``PCSCLITE_CSOCK_NAME`` is unset.
DEFAULT_CSOCK = "/run/pcscd/pcscd.comm"


class ScardCode(IntEnum):
    """PC/SC return codes (pcsc-lite ``pcsclite.h``, values as in the Windows SCard API)."""

    S_SUCCESS = 0x00000000
    """No error."""
    F_INTERNAL_ERROR = 0x80100001
    """An internal consistency check failed."""
    E_CANCELLED = 0x80100002
    """The action was cancelled by an SCardCancel request."""
    E_INVALID_HANDLE = 0x80100003
    """The supplied handle was invalid."""
    E_INVALID_PARAMETER = 0x80100004
    """One or more of the supplied parameters could not be properly interpreted."""
    E_NO_MEMORY = 0x80100006
    """Not enough memory available to complete this command."""
    E_INSUFFICIENT_BUFFER = 0x80100008
    """The data buffer to receive returned data is too small."""
    E_UNKNOWN_READER = 0x80100009
    """The specified reader name is not recognized."""
    E_TIMEOUT = 0x8010000A
    """The user-specified timeout value has expired."""
    E_SHARING_VIOLATION = 0x8010000B
    """The smart card cannot be accessed because of other connections outstanding."""
    E_NO_SMARTCARD = 0x8010000C
    """The operation requires a smart card, but no smart card is currently in the device."""
    E_PROTO_MISMATCH = 0x8010000F
    """The requested protocols are incompatible with the protocol currently in use."""
    E_NOT_READY = 0x80100010
    """The reader or smart card is not ready to accept commands."""
    E_NOT_TRANSACTED = 0x80100016
    """An attempt was made to end a non-existent transaction."""
    E_READER_UNAVAILABLE = 0x80100017
    """The specified reader is not currently available for use."""
    E_NO_SERVICE = 0x8010001D
    """The Smart card resource manager is not running."""
    E_SERVICE_STOPPED = 0x8010001E
    """The Smart card resource manager has shut down."""
    E_NO_READERS_AVAILABLE = 0x8010002E
    """Cannot find a smart card reader."""
    W_UNRESPONSIVE_CARD = 0x80100066
    """The smart card is not responding to a reset."""
    W_UNPOWERED_CARD = 0x80100067
    """Power has been removed from the smart card."""
    W_RESET_CARD = 0x80100068
    """The smart card has been reset, so any shared state information is invalid."""
    W_REMOVED_CARD = 0x80100069
    """The smart card has been removed, so further communication is not possible."""


def _code_name(code: int) -> str:
    try:
        return f"SCARD_{ScardCode(code).name}"
    except ValueError:
        return f"0x{code:08X}"


class PcscError(CardSpecError):
    """A PC/SC call failed. ``code`` is the raw ``SCARD_*`` value (``None`` when the failure is
    not a PC/SC return code), ``reader`` the reader name when one is involved.

        PcscError
        ├── NoServiceError          pcscd is not running / not reachable (0x8010001D, 1E)
        ├── ReaderUnavailableError  unknown or vanished reader (0x80100009, 17, 2E)
        ├── NoCardError             no card / card removed / unpowered (0x8010000C, 69, 67, 66)
        ├── CardResetError          another client reset the card (0x80100068)
        ├── SharingViolationError   another client holds the card exclusively (0x8010000B)
        └── PcscTimeoutError        a wait expired (0x8010000A)
    """

    def __init__(self, message: str, *, code: int | None = None, reader: str | None = None) -> None:
        where = f"{reader}: " if reader else ""
        what = f" ({_code_name(code)})" if code is not None else ""
        super().__init__(f"{where}{message}{what}")
        self.code = code
        self.reader = reader


class NoServiceError(PcscError):
    """No pcscd answers on the selected socket."""


class ReaderUnavailableError(PcscError):
    """The reader is unknown or not available."""


class NoCardError(PcscError):
    """No card in the reader, or the card was removed."""


class CardResetError(PcscError):
    """The card was reset by another client: the session state on the card is gone."""


class SharingViolationError(PcscError):
    """Another client holds the card exclusively."""


class PcscTimeoutError(PcscError):
    """A PC/SC wait expired."""


_ERROR_CLASSES: dict[int, type[PcscError]] = {
    ScardCode.E_NO_SERVICE: NoServiceError,
    ScardCode.E_SERVICE_STOPPED: NoServiceError,
    ScardCode.E_UNKNOWN_READER: ReaderUnavailableError,
    ScardCode.E_READER_UNAVAILABLE: ReaderUnavailableError,
    ScardCode.E_NO_READERS_AVAILABLE: ReaderUnavailableError,
    ScardCode.E_NO_SMARTCARD: NoCardError,
    ScardCode.W_REMOVED_CARD: NoCardError,
    ScardCode.W_UNPOWERED_CARD: NoCardError,
    ScardCode.W_UNRESPONSIVE_CARD: NoCardError,
    ScardCode.W_RESET_CARD: CardResetError,
    ScardCode.E_SHARING_VIOLATION: SharingViolationError,
    ScardCode.E_TIMEOUT: PcscTimeoutError,
}


def error_for(code: int, message: str, reader: str | None = None) -> PcscError:
    """The :class:`PcscError` subclass for a raw PC/SC return code."""
    code &= 0xFFFFFFFF
    return _ERROR_CLASSES.get(code, PcscError)(message, code=code, reader=reader)


def _check(hresult: int, message: str, reader: str | None = None) -> None:
    if hresult & 0xFFFFFFFF != ScardCode.S_SUCCESS:
        raise error_for(hresult, message, reader)


# --- selecting the pcscd (PCSCLITE_CSOCK_NAME is read once per process) -----------------------


_LINK_PREFIX = "ykt-pcsc-"


def _sweep_stale_links() -> None:
    """Remove the link directories of processes that are gone (killed, or left by
    ``os._exit`` without their atexit): ``ykt-pcsc-PID-*`` of this user in the temp dir."""
    root = Path(tempfile.gettempdir())
    me = os.getuid()
    for entry in root.glob(f"{_LINK_PREFIX}*-*"):
        pid_text = entry.name[len(_LINK_PREFIX) :].split("-", 1)[0]
        if not pid_text.isdigit():
            continue
        try:
            if entry.lstat().st_uid != me or not entry.is_dir():
                continue
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            shutil.rmtree(entry, ignore_errors=True)
        except OSError:  # another user's process, or the entry vanished meanwhile
            continue


class _CsockRouter:
    """The symlink libpcsclite connects through, re-pointed before each new context."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.link: Path | None = None
        self.foreign: str | None = None  # set if libpcsclite was initialised by someone else

    def _point(self, target: str) -> None:
        assert self.link is not None
        tmp = self.link.with_name("next.comm")
        tmp.unlink(missing_ok=True)
        os.symlink(target, tmp)
        os.replace(tmp, self.link)

    def _check_not_foreign(self) -> None:
        """With the link dangling a context must fail; if it does not, libpcsclite had already
        cached another socket name (PC/SC used in this process before this module)."""
        from smartcard import scard

        assert self.link is not None
        self._point(str(self.link.with_name("absent")))
        hresult, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
        if hresult & 0xFFFFFFFF == ScardCode.S_SUCCESS:
            scard.SCardReleaseContext(context)
            self.foreign = (
                "PC/SC was used in this process before readers.pcsc: libpcsclite reads "
                f"{CSOCK_ENV} once per process, so readers.pcsc cannot select a pcscd"
            )

    def establish(self, csock: str | Path | None) -> tuple[Any, str]:
        from smartcard import scard

        target = str(csock) if csock is not None else current_csock()
        with self.lock:
            first = self.link is None
            if first:
                _sweep_stale_links()
                directory = Path(tempfile.mkdtemp(prefix=f"{_LINK_PREFIX}{os.getpid()}-"))
                atexit.register(shutil.rmtree, directory, True)
                self.link = directory / "pcscd.comm"
                original = os.environ.get(CSOCK_ENV)
                os.environ[CSOCK_ENV] = str(self.link)
            try:
                if first:
                    self._check_not_foreign()
                if self.foreign is not None:
                    raise PcscError(self.foreign)
                self._point(target)
                hresult, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
            finally:
                if first:  # libpcsclite has cached the name: give the environment back
                    if original is None:
                        os.environ.pop(CSOCK_ENV, None)
                    else:
                        os.environ[CSOCK_ENV] = original
        _check(hresult, f"no PC/SC service at {target}")
        return context, target


_router = _CsockRouter()


def current_csock() -> str:
    """The pcscd socket used when no ``csock`` is given: ``$PCSCLITE_CSOCK_NAME`` or the
    system's."""
    return os.environ.get(CSOCK_ENV) or DEFAULT_CSOCK


def _establish(csock: str | Path | None) -> Any:
    return _router.establish(csock)[0]


def _release(context: Any) -> None:
    from smartcard import scard

    scard.SCardReleaseContext(context)


def list_readers(csock: str | Path | None = None) -> list[str]:
    """Names of the readers of the pcscd at ``csock`` (``None``: see :func:`current_csock`)."""
    from smartcard import scard

    context = _establish(csock)
    try:
        hresult, readers = scard.SCardListReaders(context, [])
        if hresult & 0xFFFFFFFF == ScardCode.E_NO_READERS_AVAILABLE:
            return []
        _check(hresult, "cannot list readers")
        return list(readers)
    finally:
        _release(context)


def card_present(reader: str, csock: str | Path | None = None) -> bool:
    """Whether pcscd currently sees a card in ``reader`` (``SCardGetStatusChange``, no wait)."""
    from smartcard import scard

    context = _establish(csock)
    try:
        hresult, states = scard.SCardGetStatusChange(
            context, 0, [(reader, scard.SCARD_STATE_UNAWARE)]
        )
        _check(hresult, "cannot read the reader state", reader)
        return bool(states[0][1] & scard.SCARD_STATE_PRESENT)
    finally:
        _release(context)


# --- the reader adapter --------------------------------------------------------------------


def _le_fixed(command: bytes, le: int) -> bytes:
    """``command`` (a short APDU) with its Le set to ``le`` (added if the command has none)."""
    if len(command) == 4:  # case 1
        return command + bytes([le])
    if len(command) == 5:  # case 2
        return command[:4] + bytes([le])
    lc = command[4]
    if lc == 0:  # extended length: leave it alone
        return command
    body = command[: 5 + lc]
    return body + bytes([le])


class PcscReader:
    """One PC/SC reader (implements :class:`cardspec.reader.Reader`).

    ``csock`` selects the pcscd (default: :func:`current_csock`); ``protocols`` is a mask of
    ``SCARD_PROTOCOL_T0 | SCARD_PROTOCOL_T1`` (default: both, the reader negotiates).
    One thread owns a reader at a time: calls are serialised by a lock.
    """

    def __init__(
        self,
        name: str,
        *,
        csock: str | Path | None = None,
        protocols: int | None = None,
        auto_get_response: bool = True,
        max_get_response: int = 64,
    ) -> None:
        from smartcard import scard

        self.name = name
        self.csock = str(csock) if csock is not None else current_csock()
        both = scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1
        self.protocols = protocols if protocols is not None else both
        self.auto_get_response = auto_get_response
        self.max_get_response = max_get_response
        self.protocol: int | None = None
        self._context: Any = None
        self._card: Any = None
        self._lock = threading.RLock()
        self._in_transaction = False

    def __repr__(self) -> str:
        return f"PcscReader({self.name!r}, csock={self.csock!r})"

    @property
    def connected(self) -> bool:
        return self._card is not None

    def connect(self) -> bytes:
        """Connect in shared mode and return the ATR."""
        from smartcard import scard

        with self._lock:
            if self._card is not None:
                self.disconnect()
            if self._context is None:
                self._context = _establish(self.csock)
            hresult, card, protocol = scard.SCardConnect(
                self._context, self.name, scard.SCARD_SHARE_SHARED, self.protocols
            )
            _check(hresult, "cannot connect to the card", self.name)
            self._card, self.protocol = card, protocol
            return self.atr()

    def atr(self) -> bytes:
        from smartcard import scard

        with self._lock:
            card = self._require_card()
            hresult, _reader, _state, _protocol, atr = scard.SCardStatus(card)
            _check(hresult, "cannot read the card status", self.name)
            return bytes(atr)

    def _require_card(self) -> Any:
        if self._card is None:
            raise NoCardError("not connected", reader=self.name)
        return self._card

    def _transmit_raw(self, command: bytes) -> bytes:
        from smartcard import scard

        hresult, response = scard.SCardTransmit(self._require_card(), self.protocol, list(command))
        _check(hresult, "transmit failed", self.name)
        if len(response) < 2:
            raise PcscError("response shorter than SW1 SW2", reader=self.name)
        return bytes(response)

    def transmit(self, command: bytes) -> bytes:
        """Send one APDU; returns data + SW1 SW2, after following ``61xx``/``6Cxx``."""
        with self._lock:
            response = self._transmit_raw(command)
            if not self.auto_get_response:
                return response
            if response[-2] == 0x6C and len(command) >= 4:
                response = self._transmit_raw(_le_fixed(command, response[-1]))
            data = response[:-2]
            rounds = 0
            cla = command[0] & 0x03 if command[0] < 0x80 else 0x00
            while response[-2] == 0x61:
                rounds += 1
                if rounds > self.max_get_response:
                    raise PcscError("too many GET RESPONSE rounds", reader=self.name)
                response = self._transmit_raw(bytes([cla, 0xC0, 0x00, 0x00, response[-1]]))
                data += response[:-2]
            return data + response[-2:]

    @contextmanager
    def transaction(self) -> Iterator[PcscReader]:
        """Exclusive use of the card for a sequence of APDUs (``SCardBeginTransaction``)."""
        from smartcard import scard

        with self._lock:
            if self._in_transaction:  # nested: the outer transaction covers it
                yield self
                return
            card = self._require_card()
            _check(scard.SCardBeginTransaction(card), "cannot begin a transaction", self.name)
            self._in_transaction = True
            try:
                yield self
            finally:
                self._in_transaction = False
                if self._card is not None:
                    scard.SCardEndTransaction(self._card, scard.SCARD_LEAVE_CARD)

    def disconnect(self) -> None:
        """Disconnect leaving the card powered (``SCARD_LEAVE_CARD``) for other clients."""
        from smartcard import scard

        with self._lock:
            if self._card is not None:
                card, self._card = self._card, None
                self.protocol = None
                scard.SCardDisconnect(card, scard.SCARD_LEAVE_CARD)

    def close(self) -> None:
        """Disconnect and release the PC/SC context."""
        with self._lock:
            self.disconnect()
            if self._context is not None:
                context, self._context = self._context, None
                _release(context)

    def __enter__(self) -> PcscReader:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
