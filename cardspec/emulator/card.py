"""The reference card: a card OS interpreting a :class:`cardspec.profile.CardProfile`.

Design notes: ``docs/design/cardspec.md`` (section ``cardspec.emulator.card``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

from cardspec import keyscheme, sm, tlv
from cardspec.apdu import CHAINING_BIT, CommandApdu
from cardspec.emulator.common import Status as _Status
from cardspec.emulator.common import index as _index
from cardspec.emulator.common import within as _within
from cardspec.emulator.emv import EmvCommands, EmvTransaction
from cardspec.emulator.image import CardState, read_image, write_image
from cardspec.emulator.security import SecurityCommands
from cardspec.errors import ApduError, CardSpecError, ProfileError, SecurityError
from cardspec.keyscheme import Algorithm, KeySlot
from cardspec.profile import (
    Access,
    AccessRule,
    CardProfile,
    ElementaryFile,
    FileStructure,
    RecordLayout,
    get_profile,
    register_profile,
    social_security_profile,
)
from cardspec.sw import SW

#: Longest command data a chain may assemble (the emulator's command buffer).
MAX_CHAINED_DATA = 4096


def build_atr(historical: bytes) -> bytes:
    """ISO/IEC 7816-3 ATR: direct convention, T=0 and T=1 offered, so TCK is present.

    TS=3B; T0 = 80|K (TD1 follows, K historical bytes); TD1 = 80 (T=0, TD2 follows);
    TD2 = 01 (T=1); historical bytes; TCK = XOR of T0 .. last historical byte.
    """
    if len(historical) > 15:
        raise ValueError("at most 15 historical bytes")
    body = bytes([0x80 | len(historical), 0x80, 0x01]) + historical
    tck = 0
    for b in body:
        tck ^= b
    return b"\x3b" + body + bytes([tck])


class Card(SecurityCommands, EmvCommands):
    """An emulated social security card (implements :class:`cardspec.reader.CardHandler`)."""

    def __init__(
        self, state: CardState, profile: CardProfile | None = None, path: Path | None = None
    ) -> None:
        self.state = state
        self.profile = profile or get_profile(state.profile_name)
        if self.profile.name != state.profile_name:
            raise ProfileError(
                f"image is for profile {state.profile_name}, not {self.profile.name}"
            )
        if self.profile.algorithm is not state.algorithm:
            raise ProfileError("image algorithm differs from the profile's")
        if self.profile.key_loading != keyscheme.key_loading_scheme(self.profile.algorithm):
            raise ProfileError(f"key loading {self.profile.key_loading!r} is not implemented")
        self.path = path
        self._ix = _index(self.profile)
        self._atr = build_atr(self.profile.historical_bytes)
        self.apdu_count = 0
        self._reset_session()

    # --- persistence ---------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path, profile: CardProfile | None = None) -> Card:
        """Load a card image; the card saves itself back to ``path`` after each change."""
        p = Path(path)
        return cls(read_image(p), profile, p)

    def save(self, path: str | Path | None = None) -> None:
        """Write the image (atomic replace). ``path`` also becomes the card's own path."""
        if path is not None:
            self.path = Path(path)
        if self.path is None:
            raise ProfileError("this card has no image path")
        write_image(self.path, self.state)

    def _persist(self) -> None:
        if self.path is not None:
            write_image(self.path, self.state)

    # --- CardHandler -----------------------------------------------------------------------

    def atr(self) -> bytes:
        return self._atr

    def power_on(self) -> None:
        self._reset_session()

    def power_off(self) -> None:
        self._reset_session()

    def _reset_session(self) -> None:
        self.current_df = self.profile.mf.name
        self.current_ef: str | None = None
        self.challenge: bytes | None = None
        self.auth: dict[KeySlot, str] = {}
        self.verified: dict[str, str] = {}
        self.channel: tuple[KeySlot, bytes] | None = None
        self._pending = b""
        self.current_record: int | None = None
        self.emv_txn: EmvTransaction | None = None
        #: a warning status (62xx) to answer instead of 9000, set by the command
        self._warning: int | None = None
        #: the (partial) DF name of the last SELECT by name, for "next occurrence"
        self._selected_name: bytes | None = None
        #: an open command chain: (CLA without b5, INS, P1, P2) and the data so far
        self._chain: tuple[tuple[int, int, int, int], bytes] | None = None

    def process(self, command: bytes) -> bytes:
        self.apdu_count += 1
        if len(command) >= 4 and command[0] == 0xFF:
            # CLA FF is reserved for PPS (ISO/IEC 7816-3): the class is not supported, whatever
            # the length (reader pseudo-APDUs FF xx never reach a card)
            return SW.CLA_NOT_SUPPORTED.to_bytes(2, "big")
        try:
            cmd = CommandApdu.from_bytes(command)
        except ApduError:
            return SW.WRONG_LENGTH.to_bytes(2, "big")
        if cmd.ins == 0xC0 and not cmd.cla & 0x80 and self._chain is None:
            return self._get_response(cmd)
        self._pending = b""
        self._warning = None
        try:
            assembled = self._chained(cmd)
            if assembled is None:
                return SW.OK.to_bytes(2, "big")  # part of a chain, buffered
            data = self._dispatch(assembled)
        except _Status as st:
            return st.sw.to_bytes(2, "big")
        except SecurityError as err:  # MAC failures from cardspec.sm
            self._close_channel()
            return err.sw.to_bytes(2, "big")
        except (CardSpecError, ValueError):  # e.g. a MAC'd command too long to be short
            return SW.NO_PRECISE_DIAGNOSIS.to_bytes(2, "big")
        if data and cmd.le is None:
            # T=0 style: a command sent without Le that produces data (a case-4 command over
            # T=0, or INTERNAL AUTHENTICATE as hospital readers send it) answers 61xx and the
            # data waits for GET RESPONSE.
            self._pending = data
            return bytes([0x61, len(data) & 0xFF])
        if cmd.le is not None and len(data) > 0 and cmd.le < len(data) and cmd.le != 256:
            return bytes([0x6C, len(data) & 0xFF])
        return data + (self._warning or SW.OK).to_bytes(2, "big")

    def _chained(self, cmd: CommandApdu) -> CommandApdu | None:
        """Command chaining: None while a chain is being buffered, else the command to run
        (the whole chain's data on its last command)."""
        key = (cmd.cla & ~CHAINING_BIT, cmd.ins, cmd.p1, cmd.p2)
        if cmd.chained:
            if self._chain is not None and self._chain[0] != key:
                self._chain = None
                raise _Status(SW.LAST_COMMAND_EXPECTED)
            data = (self._chain[1] if self._chain else b"") + cmd.data
            if len(data) > MAX_CHAINED_DATA:
                self._chain = None
                raise _Status(SW.WRONG_LENGTH)
            self._chain = (key, data)
            return None
        if self._chain is None:
            return cmd
        (expected, data), self._chain = self._chain, None
        if expected != key:
            raise _Status(SW.LAST_COMMAND_EXPECTED)
        if len(data) + len(cmd.data) > MAX_CHAINED_DATA:
            raise _Status(SW.WRONG_LENGTH)
        return replace(cmd, data=data + cmd.data)

    def _get_response(self, cmd: CommandApdu) -> bytes:
        """GET RESPONSE ``00 C0 00 00 Le``: the data held back by the previous command."""
        pending, self._pending = self._pending, b""
        if cmd.p1 or cmd.p2:
            return SW.INCORRECT_P1P2.to_bytes(2, "big")
        if not pending:
            return SW.CONDITIONS_NOT_SATISFIED.to_bytes(2, "big")
        want = cmd.le if cmd.le is not None else 256
        if want > len(pending) and want != 256:
            self._pending = pending
            return bytes([0x6C, len(pending) & 0xFF])
        chunk, rest = pending[:want], pending[want:]
        if rest:
            self._pending = rest
            return chunk + bytes([0x61, len(rest) & 0xFF])
        return chunk + (self._warning or SW.OK).to_bytes(2, "big")  # e.g. 6283 of a SELECT

    # --- dispatch --------------------------------------------------------------------------

    def _dispatch(self, cmd: CommandApdu) -> bytes:
        cla = cmd.cla
        if cla & CHAINING_BIT:  # b5 of a proprietary class: no chaining defined there
            raise _Status(SW.CHAINING_NOT_SUPPORTED)
        if cla & 0x03:
            raise _Status(SW.LOGICAL_CHANNEL_NOT_SUPPORTED)
        if cla & ~0x0C & 0xFF not in (0x00, 0x80):
            raise _Status(SW.CLA_NOT_SUPPORTED)
        handler = self._handlers.get(cmd.ins)
        if handler is None:
            raise _Status(SW.INS_NOT_SUPPORTED)
        if cla & sm.SM_CLA and cmd.ins not in self._sm_ins:
            raise _Status(SW.SM_NOT_SUPPORTED)
        if self.state.blocked_apps and cmd.ins not in self._blocked_ok and self._in_blocked_df():
            raise _Status(SW.CONDITIONS_NOT_SATISFIED)
        return handler(self, cmd)

    #: what a blocked (non-payment) application still answers (:meth:`_block_df`): SELECT,
    #: GET CHALLENGE, EXTERNAL AUTHENTICATE, GET DATA, APPLICATION UNBLOCK / BLOCK
    _blocked_ok: ClassVar[frozenset[int]] = frozenset({0xA4, 0x84, 0x82, 0xCA, 0x18, 0x1E})

    def _in_blocked_df(self) -> bool:
        """The current DF is a blocked application that is not a payment application, or is
        below one (a blocked payment application keeps answering: AAC, EMV Book 3)."""
        dfs = self._ix.dfs
        return any(
            _within(self.current_df, path) and path in dfs and dfs[path].emv is None
            for path in self.state.blocked_apps
        )

    def _application_block(self, cmd: CommandApdu) -> bytes:
        """APPLICATION BLOCK / UNBLOCK: the issuer script of a payment application
        (:meth:`EmvCommands._application_block`) or the DMK-MAC'd block of any other
        (:meth:`SecurityCommands._block_df`)."""
        if self._ix.dfs[self.current_df].emv is not None:
            return EmvCommands._application_block(self, cmd)
        return SecurityCommands._block_df(self, cmd)

    # --- helpers ---------------------------------------------------------------------------

    def _close_channel(self) -> None:
        if self.channel is not None:
            self.auth.pop(self.channel[0], None)
        self.channel = None

    def _enter_df(self, path: str) -> None:
        self.current_df = path
        self.current_ef = None
        self.current_record = None
        self.emv_txn = None  # a new selection starts a new transaction
        self.auth = {s: p for s, p in self.auth.items() if _within(path, p)}
        self.verified = {n: p for n, p in self.verified.items() if _within(path, p)}
        if self.channel is not None and self.channel[0] not in self.auth:
            self.channel = None

    def _unwrap(self, cmd: CommandApdu) -> tuple[bytes, KeySlot | None]:
        """Plain data of a command and the channel key that MAC'd it (None: not MAC'd)."""
        if not cmd.cla & sm.SM_CLA:
            return cmd.data, None
        if len(cmd.data) < sm.MAC_LENGTH:
            raise _Status(SW.SM_DATA_MISSING)  # secure messaging announced, no MAC
        if self.channel is None:
            raise _Status(SW.SECURITY_STATUS_NOT_SATISFIED)
        slot, iv = self.channel
        key = self.state.keys.get(slot)
        if key is None:
            raise _Status(SW.SECURITY_STATUS_NOT_SATISFIED)
        self._key_usable(slot)
        try:
            body, block = sm.unwrap_command(key, self.alg, cmd.header, cmd.data, iv)
        except SecurityError:
            self._key_failed(slot)
            raise
        self.channel = (slot, block)
        return body, slot

    def _check_read(self, rule: AccessRule) -> None:
        if self.personalising and KeySlot.KMC in self.auth:
            return
        kind = rule.kind
        if kind is Access.FREE:
            return
        pin_ok = rule.pin is not None and rule.pin in self.verified
        key_ok = rule.key is not None and rule.key in self.auth
        if (kind is Access.PIN and pin_ok) or (kind is Access.KEY and key_ok):
            return
        if kind is Access.PIN_OR_KEY and (pin_ok or key_ok):
            return
        if kind is Access.PIN_AND_KEY and pin_ok and key_ok:
            return
        raise _Status(SW.SECURITY_STATUS_NOT_SATISFIED)

    def _check_write(self, rule: AccessRule, mac_slot: KeySlot | None) -> None:
        if self.personalising and KeySlot.KMC in self.auth:
            if mac_slot is not KeySlot.KMC:
                raise _Status(SW.SM_DATA_MISSING)
            return
        kind = rule.kind
        if kind is Access.FREE:
            return
        if kind is Access.NEVER:
            raise _Status(SW.SECURITY_STATUS_NOT_SATISFIED)
        pin_ok = rule.pin is not None and rule.pin in self.verified
        key_ok = rule.key is not None and rule.key in self.auth and mac_slot is rule.key
        if rule.key is not None and rule.key in self.auth and mac_slot is None and not pin_ok:
            raise _Status(SW.SM_DATA_MISSING)
        if (
            (kind is Access.PIN and pin_ok)
            or (kind is Access.KEY and key_ok)
            or (kind is Access.PIN_OR_KEY and (pin_ok or key_ok))
            or (kind is Access.PIN_AND_KEY and pin_ok and key_ok)
        ):
            return
        raise _Status(SW.SECURITY_STATUS_NOT_SATISFIED)

    def _fci_df(self, path: str) -> bytes:
        df = self._ix.dfs[path]
        if df.df_name:
            ident = tlv.encode(0x84, df.df_name)
        else:
            ident = tlv.encode(0x83, df.fid.to_bytes(2, "big"))
        prop = tlv.encode(0xA5, df.fci_proprietary) if df.fci_proprietary else b""
        return tlv.encode(0x6F, ident + prop)

    def _fcp_ef(self, path: str) -> bytes:
        ef = self._ix.efs[path]
        if ef.structure is FileStructure.TRANSPARENT:
            size = len(self.state.binaries.get(path, b""))
            desc = tlv.encode(0x82, bytes([ef.structure.descriptor])) + tlv.encode(
                0x80, size.to_bytes(2, "big")
            )
        else:
            desc = tlv.encode(
                0x82, bytes([ef.structure.descriptor, 0x21, 0x00, ef.record_size, ef.record_count])
            )
        sfi = tlv.encode(0x88, bytes([ef.sfi << 3])) if ef.sfi else b""
        return tlv.encode(0x62, desc + tlv.encode(0x83, ef.fid.to_bytes(2, "big")) + sfi)

    # --- SELECT ----------------------------------------------------------------------------

    def _select(self, cmd: CommandApdu) -> bytes:
        """SELECT (ISO/IEC 7816-4 11.2.2). P1: 00 MF/DF/EF by FID (empty data = MF), 01 child
        DF, 02 EF under the current DF, 03 parent DF, 04 DF name (P2 b2-b1 00 first / 02 next
        occurrence of a name that starts with the data), 08 path from the MF, 09 path from the
        current DF. P2 b4-b3: 00 FCI, 04 FCP, 0C no data (08, the FMD, is not offered: 6A86).

        CHOICE: an EF has no FCI of its own. A SELECT of an EF answers its FCP (``62``) when it
        asks for one (P2 04) or carries an Le; sent as a case-3 command with P2 00 it answers
        9000 and no data, as the public reader code expects (``00 A4 02 00 02 EF06``, then a
        check for 90 00: see tests/cardspec/conformance/). A DF answers its FCI ``6F`` for P2 00
        and its FCP ``62`` (descriptor 38, FID, DF name) for P2 04.
        """
        response = cmd.p2 & 0x0C
        occurrence = cmd.p2 & 0x03
        if cmd.p2 & 0xF0 or response == 0x08 or (occurrence and cmd.p1 != 0x04):
            raise _Status(SW.INCORRECT_P1P2)
        if occurrence not in (0x00, 0x02):
            raise _Status(SW.INCORRECT_P1P2)  # last / previous occurrence: not offered
        ix = self._ix
        mf = self.profile.mf.name
        target: str | None = None
        is_df = True
        p1, data = cmd.p1, cmd.data
        if p1 in (0x00, 0x01, 0x02):
            if len(data) != 2 and (data or p1 != 0x00):
                raise _Status(SW.WRONG_LENGTH)
            fid = int.from_bytes(data, "big") if data else 0x3F00
            if fid == 0x3F00 and p1 == 0x00:
                target = mf
            elif p1 in (0x00, 0x01):
                target = ix.df_by_fid.get((self.current_df, fid))
            ef = ix.ef_by_fid.get((self.current_df, fid))
            if target is None and p1 in (0x00, 0x02) and ef is not None:
                target, is_df = ef, False
            parent = ix.parent.get(self.current_df)
            if target is None and p1 == 0x00 and parent is not None:
                target = ix.df_by_fid.get((parent, fid))  # a sibling DF
        elif p1 == 0x03:
            if data:
                raise _Status(SW.WRONG_LENGTH)
            target = ix.parent.get(self.current_df)
        elif p1 == 0x04:
            if not 1 <= len(data) <= 16:
                raise _Status(SW.WRONG_LENGTH)
            target = self._df_by_name(data, next_occurrence=occurrence == 0x02)
        elif p1 in (0x08, 0x09):
            if not data or len(data) % 2:
                raise _Status(SW.WRONG_LENGTH)
            node = mf if p1 == 0x08 else self.current_df
            fids = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
            for i, fid in enumerate(fids):
                nxt = ix.df_by_fid.get((node, fid))
                if nxt is None and i == len(fids) - 1:
                    ef = ix.ef_by_fid.get((node, fid))
                    if ef is not None:
                        target, is_df = ef, False
                        break
                if nxt is None:
                    raise _Status(SW.FILE_NOT_FOUND)
                node = nxt
            else:
                target = node
        else:
            raise _Status(SW.INCORRECT_P1P2)
        if target is None:
            raise _Status(SW.FILE_NOT_FOUND)
        if is_df:
            self._enter_df(target)
            self._selected_name = data if p1 == 0x04 else None
            if target in self.state.blocked_apps or self._in_blocked_df():
                self._warning = SW.FILE_INVALIDATED  # EMV Book 1 12.3.2: blocked application
            if response == 0x0C:
                return b""
            return self._fcp_df(target) if response == 0x04 else self._fci_df(target)
        df_path = target.rsplit("/", 1)[0]
        if df_path != self.current_df:
            self._enter_df(df_path)
        self.current_ef = target
        self.current_record = None
        if response == 0x0C or (response == 0x00 and cmd.le is None):
            return b""
        return self._fcp_ef(target)

    def _df_by_name(self, name: bytes, *, next_occurrence: bool) -> str | None:
        """The DF whose name is ``name`` or, for a partial name (EMV Book 1 12.3.3), the
        first / next one in profile order whose name starts with it."""
        exact = self._ix.by_name.get(name)
        matches = [path for full, path in self._ix.by_name.items() if full.startswith(name)]
        if not next_occurrence:
            return exact if exact is not None else (matches[0] if matches else None)
        if self._selected_name is None or not self._selected_name.startswith(name):
            return matches[0] if matches else None
        try:
            current = matches.index(self.current_df)
        except ValueError:
            return matches[0] if matches else None
        return matches[current + 1] if current + 1 < len(matches) else None

    def _fcp_df(self, path: str) -> bytes:
        df = self._ix.dfs[path]
        body = tlv.encode(0x82, b"\x38") + tlv.encode(0x83, df.fid.to_bytes(2, "big"))
        if df.df_name:
            body += tlv.encode(0x84, df.df_name)
        return tlv.encode(0x62, body)

    # --- file access -----------------------------------------------------------------------

    def _ef_for(self, sfi: int) -> tuple[str, ElementaryFile]:
        if sfi == 0:
            if self.current_ef is None:
                raise _Status(SW.NO_CURRENT_EF)
            path = self.current_ef
        else:
            found = self._ix.ef_by_sfi.get((self.current_df, sfi))
            if found is None:
                raise _Status(SW.FILE_NOT_FOUND)
            path = found
        return path, self._ix.efs[path]

    def _record_ef(self, cmd: CommandApdu) -> tuple[str, ElementaryFile]:
        if cmd.p2 & 0x07 != 0x04 or cmd.p1 == 0:
            raise _Status(SW.INCORRECT_P1P2)
        path, ef = self._ef_for(cmd.p2 >> 3)
        if ef.structure is FileStructure.TRANSPARENT:
            raise _Status(SW.INCOMPATIBLE_FILE_STRUCTURE)
        return path, ef

    def _records(self, path: str, ef: ElementaryFile) -> list[bytes | None]:
        recs = self.state.records.get(path)
        if recs is None:
            size = 0 if ef.structure is FileStructure.CYCLIC else ef.record_count
            recs = [*ef.content, *[None] * (size - len(ef.content))]
            self.state.records[path] = recs
        return recs

    def _read_record(self, cmd: CommandApdu) -> bytes:
        """READ RECORD (ISO/IEC 7816-4 11.3.3). P2 b8-b4: SFI (0 = current EF); b3-b1:
        100 record number P1; 000 / 001 / 010 / 011 first / last / next / previous record
        whose identifier is P1, the next and previous counted from the current record.

        The record identifier is the record's first byte, the tag of its (SIMPLE- or BER-) TLV
        object (ISO/IEC 7816-4 7.3.2). This is how public reader code reads the holder fields:
        ``00 B2 08 00 14`` after selecting EF06 reads the record of tag 08 (the SSN).
        A file of fixed-layout records (the transaction log) has no identifiers: 6981.
        CHOICE: the multi-record modes 101 / 110 are not offered (6A86)."""
        self._unwrap(cmd)  # CLA 0C / 8C: the MAC must be there (6987) and right (6988)
        mode = cmd.p2 & 0x07
        if mode in (0x05, 0x06, 0x07) or cmd.p1 == 0:
            raise _Status(SW.INCORRECT_P1P2)
        path, ef = self._ef_for(cmd.p2 >> 3)
        if ef.structure is FileStructure.TRANSPARENT:
            raise _Status(SW.INCOMPATIBLE_FILE_STRUCTURE)
        self._check_read(ef.read)
        if self.current_ef != path:
            self.current_ef, self.current_record = path, None
        recs = self._records(path, ef)
        if mode == 0x04:
            number = cmd.p1
        else:
            if ef.layout is RecordLayout.FIXED:
                raise _Status(SW.INCOMPATIBLE_FILE_STRUCTURE)
            number = self._find_record(recs, cmd.p1, mode)
        if number > len(recs) or recs[number - 1] is None:
            raise _Status(SW.RECORD_NOT_FOUND)
        record = recs[number - 1]
        assert record is not None
        self.current_record = number
        return record

    def _find_record(self, recs: list[bytes | None], ident: int, mode: int) -> int:
        """Number of the record whose identifier is ``ident`` for search ``mode``."""
        numbers = [n for n, r in enumerate(recs, 1) if r and r[0] == ident]
        current = self.current_record
        if mode == 0x00:  # first occurrence
            found = numbers[:1]
        elif mode == 0x01:  # last occurrence
            found = numbers[-1:]
        elif mode == 0x02:  # next occurrence (the first one when there is no current record)
            found = [n for n in numbers if current is None or n > current][:1]
        else:  # previous occurrence (the last one when there is no current record)
            found = [n for n in numbers if current is None or n < current][-1:]
        if not found:
            raise _Status(SW.RECORD_NOT_FOUND)
        return found[0]

    def _check_record_length(self, ef: ElementaryFile, data: bytes) -> None:
        fixed = ef.structure in (FileStructure.LINEAR_FIXED, FileStructure.CYCLIC)
        if not data or len(data) > ef.record_size or (fixed and len(data) != ef.record_size):
            raise _Status(SW.WRONG_LENGTH)

    def _update_record(self, cmd: CommandApdu) -> bytes:
        data, mac_slot = self._unwrap(cmd)
        path, ef = self._record_ef(cmd)
        self._check_write(ef.write, mac_slot)
        self._check_record_length(ef, data)
        recs = self._records(path, ef)
        if cmd.p1 > (len(recs) if ef.structure is FileStructure.CYCLIC else ef.record_count):
            raise _Status(SW.RECORD_NOT_FOUND)
        recs[cmd.p1 - 1] = data
        self.current_ef, self.current_record = path, cmd.p1
        self._persist()
        return b""

    def _append_record(self, cmd: CommandApdu) -> bytes:
        data, mac_slot = self._unwrap(cmd)
        if cmd.p1 != 0 or cmd.p2 & 0x07:
            raise _Status(SW.INCORRECT_P1P2)
        path, ef = self._ef_for(cmd.p2 >> 3)
        if ef.structure is FileStructure.TRANSPARENT:
            raise _Status(SW.INCOMPATIBLE_FILE_STRUCTURE)
        self._check_write(ef.write, mac_slot)
        self._check_record_length(ef, data)
        recs = self._records(path, ef)
        if ef.structure is FileStructure.CYCLIC:
            recs.insert(0, data)
            del recs[ef.record_count :]
            number = 1
        else:
            try:
                number = recs.index(None) + 1
            except ValueError:
                raise _Status(SW.NOT_ENOUGH_MEMORY) from None
            recs[number - 1] = data
        self.current_ef, self.current_record = path, number
        self._persist()
        return b""

    def _binary_target(self, cmd: CommandApdu) -> tuple[str, ElementaryFile, int]:
        if cmd.p1 & 0x80:
            if cmd.p1 & 0x60:
                raise _Status(SW.INCORRECT_P1P2)
            path, ef = self._ef_for(cmd.p1 & 0x1F)
            offset = cmd.p2
        else:
            path, ef = self._ef_for(0)
            offset = (cmd.p1 << 8) | cmd.p2
        if ef.structure is not FileStructure.TRANSPARENT:
            raise _Status(SW.INCOMPATIBLE_FILE_STRUCTURE)
        return path, ef, offset

    def _read_binary(self, cmd: CommandApdu) -> bytes:
        self._unwrap(cmd)  # CLA 0C / 8C: the MAC must be there (6987) and right (6988)
        path, ef, offset = self._binary_target(cmd)
        self._check_read(ef.read)
        self.current_ef = path
        content = self.state.binaries.get(path, b"")
        if offset > len(content):
            raise _Status(SW.WRONG_P1P2)
        want = cmd.le if cmd.le is not None else 256
        return content[offset : offset + want]

    def _update_binary(self, cmd: CommandApdu) -> bytes:
        data, mac_slot = self._unwrap(cmd)
        path, ef, offset = self._binary_target(cmd)
        self._check_write(ef.write, mac_slot)
        size = ef.record_size or sum(e.length for e in ef.elements)
        content = bytearray(self.state.binaries.get(path, b"").ljust(size, b"\x00"))
        if offset + len(data) > size:
            raise _Status(SW.WRONG_P1P2)
        content[offset : offset + len(data)] = data
        self.state.binaries[path] = bytes(content)
        self.current_ef = path
        self._persist()
        return b""

    #: instructions that accept a MAC'd command (CLA x4 / xC); any other answers 6882
    _sm_ins: ClassVar[frozenset[int]] = frozenset(
        {0xB0, 0xB2, 0xD6, 0xDC, 0xE2, 0xD4, 0xF0, 0x24, 0x2C, 0x1E, 0x18, 0x46, 0xDA}
    )

    _handlers: ClassVar[dict[int, Callable[[Card, CommandApdu], bytes]]] = {
        0xA4: _select,
        0xB0: _read_binary,
        0xD6: _update_binary,
        0xB2: _read_record,
        0xDC: _update_record,
        0xE2: _append_record,
        0x84: SecurityCommands._get_challenge,
        0x82: SecurityCommands._external_authenticate,
        0x88: SecurityCommands._internal_authenticate,
        0x20: SecurityCommands._verify,
        0x24: EmvCommands._change_or_script,
        0x2C: SecurityCommands._unblock,
        0x5E: SecurityCommands._pboc_change_pin,
        0xD4: SecurityCommands._write_key,
        0xF0: SecurityCommands._set_status,
        0x46: SecurityCommands._generate_key_pair,
        0xDA: SecurityCommands._put_data,
        0xCA: EmvCommands._get_data_or_atc,
        0xA8: EmvCommands._get_processing_options,
        0xAE: EmvCommands._generate_ac,
        0x1E: _application_block,
        0x18: _application_block,
    }


def blank_card(
    chip_serial: bytes,
    kmc_key: bytes,
    algorithm: Algorithm = Algorithm.DES3,
    *,
    klk: bytes,
    profile: CardProfile | None = None,
    path: str | Path | None = None,
) -> Card:
    """A blank chip as delivered by the manufacturer: a chip serial, the transport key KMC and
    the key-loading key KLK (the card's own, already diversified keys; the KLK is AES-128 on
    3DES and AES cards, SM4 on SM4 cards, see ``keyscheme`` "Key loading"). With ``path`` the
    image is saved there and kept up to date after every change."""
    if len(chip_serial) != 8:
        raise ValueError("chip serial must be 8 bytes")
    if len(kmc_key) != algorithm.key_length:
        raise ValueError(f"KMC must be {algorithm.key_length} bytes")
    if len(klk) != 16:
        raise ValueError("KLK must be 16 bytes (AES-128 or SM4)")
    if profile is None:
        profile = (
            get_profile(social_security_profile(algorithm=algorithm).name)
            if algorithm is Algorithm.DES3
            else get_profile(social_security_profile(generation=3, algorithm=algorithm).name)
        )
    if profile.algorithm is not algorithm:
        raise ProfileError("profile algorithm differs from the blank's")
    register_profile(profile)
    state = CardState(
        profile_name=profile.name,
        chip_serial=chip_serial,
        algorithm=algorithm,
        keys={KeySlot.KMC: kmc_key},
        klk=klk,
    )
    card = Card(state, profile)
    if path is not None:
        card.save(path)
    return card
