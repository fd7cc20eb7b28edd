"""The EMV / PBOC debit application of the emulated card (EMV 4.3 Book 3 chapter 6).

A mixin of :class:`cardspec.emulator.card.Card`; these commands answer only while a DF with an
:class:`~cardspec.profile.EmvApplication` is selected (elsewhere 6D00, as on a card whose
selected application does not offer them). Computations: :mod:`cardspec.emv`, with the card's
algorithm (3DES, AES or SM4: its FIN_* keys, session keys, MACs and PIN encipherment).

==========================  ========================  ============================================
command                     APDU                      notes
==========================  ========================  ============================================
GET PROCESSING OPTIONS      80 A8 00 00 83 L PDOL     ATC + 1 (persisted); 80 AIP || AFL
GENERATE AC                 80 AE 80|40|00 00 CDOL    first (CDOL1) then second (CDOL2);
                                                      80 CID || ATC || AC || IAD
APPLICATION BLOCK           84 1E 00 00 04 MAC        issuer script: SELECT answers 6283, AC = AAC
APPLICATION UNBLOCK         84 18 00 00 04 MAC        issuer script
PIN CHANGE / UNBLOCK        84 24 00 00|02 L ... MAC  00 unblock; 02 new PIN (format 2 block
                                                      enciphered under SK-SMC) without the old one
GET DATA                    80 CA 9F 36 | 9F 13       the ATC | the last online ATC register
==========================  ========================  ============================================

Responses use format 1 (template ``80``, EMV Book 3 6.5.5.4 / 6.5.8.4), as PBOC debit cards
answer and as the public bank-card reader code of the conformance vectors requires (it reads
AIP and AFL from tag 80 of the GPO answer).

Card risk management, CHOICE (an online-only debit application): the first GENERATE AC answers
an ARQC when a TC or an ARQC is asked, an AAC when an AAC is asked or the application is
blocked; the second answers what is asked (TC or AAC; an ARQC there is refused, 6985), an AAC
when blocked. No CDA (P1 b5 set: 6A86). Issuer scripts run after a GENERATE AC of the same
selection: their MAC keys are the session keys of that cryptogram. A wrong script MAC counts on
the FIN_SMI key's error counter like any key the card verifies.

Issuer application data (9F10), CHOICE in the PBOC / VSDC shape: ``06 DKI CVN CVR(4)`` with the
card verification results ``03 b1 b2 00``: b1 bits 8-7 second AC type (00 AAC, 01 TC,
10 not asked), bits 6-5 first AC type (00 AAC, 01 TC, 10 ARQC); b2 80 offline PIN verified in
this transaction, 01 application blocked. The AC input is the CDOL data || AIP || ATC || CVR.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from cardspec import emv, sm, tlv
from cardspec.apdu import CommandApdu
from cardspec.emulator.common import Index
from cardspec.emulator.common import Status as _Status
from cardspec.emulator.image import CardState, PinState
from cardspec.keyscheme import Algorithm, KeySlot
from cardspec.profile import CardProfile, EmvApplication, PinSpec
from cardspec.sw import SW

AC_TYPES = {0x00: emv.CryptogramType.AAC, 0x40: emv.CryptogramType.TC,
            0x80: emv.CryptogramType.ARQC}  # fmt: skip
_CVR_FIRST = {emv.CryptogramType.AAC: 0x00, emv.CryptogramType.TC: 0x10,
              emv.CryptogramType.ARQC: 0x20}  # fmt: skip
_CVR_SECOND = {emv.CryptogramType.AAC: 0x00, emv.CryptogramType.TC: 0x40}


@dataclass
class EmvTransaction:
    """One transaction: from GET PROCESSING OPTIONS to the second GENERATE AC."""

    atc: int
    stage: str = "gpo"
    """``gpo`` (first AC next), ``first`` (second AC next), ``done``."""
    ac: bytes | None = None
    cvr_first: int = 0


class EmvCommands:
    """GET PROCESSING OPTIONS, GENERATE AC and the issuer scripts."""

    state: CardState
    profile: CardProfile
    _ix: Index
    current_df: str
    verified: dict[str, str]
    emv_txn: EmvTransaction | None

    def _persist(self) -> None:
        raise NotImplementedError

    def _key_usable(self, slot: KeySlot) -> None:
        raise NotImplementedError

    def _key_failed(self, slot: KeySlot) -> int:
        raise NotImplementedError

    def _key_succeeded(self, slot: KeySlot) -> None:
        raise NotImplementedError

    def _set_new_pin(self, spec: PinSpec, st: PinState, block: bytes) -> None:
        raise NotImplementedError

    def _change(self, cmd: CommandApdu) -> bytes:
        raise NotImplementedError

    def _get_data(self, cmd: CommandApdu) -> bytes:
        raise NotImplementedError

    def _change_or_script(self, cmd: CommandApdu) -> bytes:
        """INS 24: an issuer script PIN CHANGE/UNBLOCK while the EMV application is selected
        (MAC'd, P2 00/01/02), else CHANGE REFERENCE DATA / the PBOC-style unblock."""
        if (
            cmd.cla & sm.SM_CLA
            and self._ix.dfs[self.current_df].emv is not None
            and cmd.p2 in (0x00, 0x01, 0x02)
        ):
            return self._emv_pin_script(cmd)
        return self._change(cmd)

    def _get_data_or_atc(self, cmd: CommandApdu) -> bytes:
        """GET DATA: 9F36 (the ATC) and 9F13 (the last online ATC register) in the EMV
        application, else the card's tags."""
        if self._ix.dfs[self.current_df].emv is not None:
            if (cmd.p1, cmd.p2) == (0x9F, 0x36):
                return tlv.encode(0x9F36, self.state.atc.to_bytes(2, "big"))
            if (cmd.p1, cmd.p2) == (0x9F, 0x13):
                return tlv.encode(0x9F13, self.state.last_online_atc.to_bytes(2, "big"))
        return self._get_data(cmd)

    # --- helpers ---------------------------------------------------------------------------

    def _emv_app(self) -> EmvApplication:
        app = self._ix.dfs[self.current_df].emv
        if app is None:
            raise _Status(SW.INS_NOT_SUPPORTED)
        return app

    @property
    def _emv_blocked(self) -> bool:
        return self.current_df in self.state.blocked_apps

    def _emv_key(self, slot: KeySlot) -> bytes:
        key = self.state.keys.get(slot)
        if key is None:
            raise _Status(SW.CONDITIONS_NOT_SATISFIED)
        return key

    @property
    def _emv_alg(self) -> Algorithm:
        """The card's algorithm: 3DES, AES or SM4 computations (:mod:`cardspec.emv`)."""
        return Algorithm(self.state.algorithm)

    def _emv_pin(self) -> PinSpec:
        pins = self._ix.dfs[self.current_df].pins
        if not pins:
            raise _Status(SW.REFERENCED_DATA_NOT_FOUND)
        return pins[0]

    # --- GET PROCESSING OPTIONS / GENERATE AC ------------------------------------------------

    def _get_processing_options(self, cmd: CommandApdu) -> bytes:
        app = self._emv_app()
        if cmd.p1 or cmd.p2:
            raise _Status(SW.INCORRECT_P1P2)
        if cmd.cla != 0x80:
            raise _Status(SW.CLA_NOT_SUPPORTED)
        try:
            template = tlv.decode_one(cmd.data)
        except ValueError:
            raise _Status(SW.WRONG_DATA) from None
        if template.tag != 0x83:
            raise _Status(SW.WRONG_DATA)
        if len(template.value) != emv.dol_length(app.pdol):
            raise _Status(SW.WRONG_LENGTH)
        if self.emv_txn is not None:
            raise _Status(SW.CONDITIONS_NOT_SATISFIED)  # one transaction per selection
        if self.state.atc >= 0xFFFF:
            raise _Status(SW.CONDITIONS_NOT_SATISFIED)  # ATC exhausted: the application is dead
        self.state.atc += 1
        self._persist()
        self.emv_txn = EmvTransaction(atc=self.state.atc)
        return tlv.encode(0x80, app.aip + app.afl)

    def _generate_ac(self, cmd: CommandApdu) -> bytes:
        app = self._emv_app()
        if cmd.cla != 0x80:
            raise _Status(SW.CLA_NOT_SUPPORTED)
        asked = AC_TYPES.get(cmd.p1)
        if asked is None or cmd.p2:
            raise _Status(SW.INCORRECT_P1P2)  # RFU type, CDA asked (b5) or P2 not 00
        txn = self.emv_txn
        if txn is None or txn.stage == "done":
            raise _Status(SW.CONDITIONS_NOT_SATISFIED)
        second = txn.stage == "first"
        if len(cmd.data) != emv.dol_length(app.cdol2 if second else app.cdol1):
            raise _Status(SW.WRONG_LENGTH)
        if second and asked is emv.CryptogramType.ARQC:
            raise _Status(SW.CONDITIONS_NOT_SATISFIED)
        key = self._emv_key(KeySlot.FIN_AC)
        if asked is emv.CryptogramType.AAC or self._emv_blocked:
            result = emv.CryptogramType.AAC
        else:
            result = emv.CryptogramType.TC if second else emv.CryptogramType.ARQC
        if second:
            b1 = txn.cvr_first | _CVR_SECOND[result]
        else:
            txn.cvr_first = _CVR_FIRST[result]
            b1 = txn.cvr_first | 0x80  # second AC not asked yet
        pin = self._emv_pin()
        b2 = (0x80 if pin.name in self.verified else 0) | (0x01 if self._emv_blocked else 0)
        cvr = bytes([0x03, b1, b2, 0x00])
        atc = txn.atc.to_bytes(2, "big")
        alg = self._emv_alg
        ac = emv.application_cryptogram(
            emv.ac_session_key(key, txn.atc, alg), cmd.data + app.aip + atc + cvr, alg
        )
        txn.ac = ac
        txn.stage = "done" if second or result is emv.CryptogramType.AAC else "first"
        if second and result is emv.CryptogramType.TC:
            self.state.last_online_atc = txn.atc  # the online transaction completed
            self._persist()
        iad = bytes([0x06, app.dki, app.cvn]) + cvr
        return tlv.encode(0x80, bytes([result]) + atc + ac + iad)

    # --- issuer scripts ----------------------------------------------------------------------

    def _script_data(self, cmd: CommandApdu) -> tuple[bytes, EmvTransaction]:
        """Check an issuer script command's MAC; returns its plain data."""
        self._emv_app()
        if not cmd.cla & sm.SM_CLA:
            raise _Status(SW.SM_DATA_MISSING)
        if len(cmd.data) < emv.MAC_LENGTH:
            raise _Status(SW.SM_DATA_MISSING)
        txn = self.emv_txn
        if txn is None or txn.ac is None:
            raise _Status(SW.CONDITIONS_NOT_SATISFIED)  # no cryptogram: no session keys
        self._key_usable(KeySlot.FIN_SMI)
        body, mac = cmd.data[: -emv.MAC_LENGTH], cmd.data[-emv.MAC_LENGTH :]
        alg = self._emv_alg
        sk = emv.sm_session_key(self._emv_key(KeySlot.FIN_SMI), txn.ac, alg)
        if not hmac.compare_digest(emv.script_mac(sk, cmd.header, txn.atc, txn.ac, body, alg), mac):
            self._key_failed(KeySlot.FIN_SMI)
            raise _Status(SW.SM_DATA_INCORRECT)
        self._key_succeeded(KeySlot.FIN_SMI)
        return body, txn

    def _application_block(self, cmd: CommandApdu) -> bytes:
        body, _ = self._script_data(cmd)
        if cmd.p1 or cmd.p2:
            raise _Status(SW.INCORRECT_P1P2)
        if body:
            raise _Status(SW.WRONG_LENGTH)
        blocked = self.state.blocked_apps
        if cmd.ins == 0x1E and self.current_df not in blocked:
            blocked.append(self.current_df)
        elif cmd.ins == 0x18 and self.current_df in blocked:
            blocked.remove(self.current_df)
        self._persist()
        return b""

    def _emv_pin_script(self, cmd: CommandApdu) -> bytes:
        """PIN CHANGE/UNBLOCK (EMV Book 3 6.5.10): P2 00 unblock, 02 new PIN without the
        current one. CHOICE: P2 01 (with the current PIN, a VIS-format block) is not offered."""
        body, txn = self._script_data(cmd)
        if cmd.p1 or cmd.p2 not in (0x00, 0x02):
            raise _Status(SW.INCORRECT_P1P2)
        spec = self._emv_pin()
        st = self.state.pins.get(spec.name)
        if st is None:
            raise _Status(SW.REFERENCED_DATA_NOT_FOUND)
        if cmd.p2 == 0x00:
            if body:
                raise _Status(SW.WRONG_LENGTH)
            st.tries_left = spec.tries
        else:
            assert txn.ac is not None
            alg = self._emv_alg
            sk = emv.sm_session_key(self._emv_key(KeySlot.FIN_SMC), txn.ac, alg)
            try:
                block = emv.decrypt_pin_block(sk, body, alg)
            except ValueError:
                raise _Status(SW.WRONG_DATA) from None
            self._set_new_pin(spec, st, block)
        self._persist()
        return b""
