"""Security commands of the emulated card: authentication, PINs, personalisation, GET DATA.

A mixin of :class:`cardspec.emulator.card.Card` (see its docstring for the command table).
"""

from __future__ import annotations

import hmac
import os

from cardspec import keyscheme, sm, sm2, tlv
from cardspec.apdu import CommandApdu
from cardspec.emulator.common import Index
from cardspec.emulator.common import Status as _Status
from cardspec.emulator.common import within as _within
from cardspec.emulator.image import CardState, LifeCycle, PinState
from cardspec.errors import SecurityError
from cardspec.keyscheme import Algorithm, KeySlot
from cardspec.profile import CardProfile, KeySpec, PinFormat, PinSpec
from cardspec.sw import SW


class SecurityCommands:
    """GET CHALLENGE, EXTERNAL/INTERNAL AUTHENTICATE, VERIFY, CHANGE, UNBLOCK, WRITE KEY,
    SET STATUS, GET DATA."""

    state: CardState
    profile: CardProfile
    _ix: Index
    current_df: str
    challenge: bytes | None
    auth: dict[KeySlot, str]
    verified: dict[str, str]
    channel: tuple[KeySlot, bytes] | None

    @property
    def alg(self) -> Algorithm:
        return self.state.algorithm

    @property
    def personalising(self) -> bool:
        return self.state.life_cycle is LifeCycle.PERSONALISATION

    def _persist(self) -> None:
        raise NotImplementedError

    def _reset_session(self) -> None:
        raise NotImplementedError

    def _unwrap(self, cmd: CommandApdu) -> tuple[bytes, KeySlot | None]:
        raise NotImplementedError

    # --- authentication --------------------------------------------------------------------

    def _get_challenge(self, cmd: CommandApdu) -> bytes:
        if cmd.p1 or cmd.p2:
            raise _Status(SW.INCORRECT_P1P2)
        if cmd.data or cmd.le not in (4, 8):
            raise _Status(SW.WRONG_LENGTH)
        self.challenge = os.urandom(cmd.le)
        return self.challenge

    def _key_in_scope(self, key_id: int) -> tuple[KeySpec, bytes]:
        found = self._ix.keys_by_id.get(key_id)
        if found is None or not _within(self.current_df, found[0]):
            raise _Status(SW.REFERENCED_DATA_NOT_FOUND)
        spec = found[1]
        key = self.state.keys.get(spec.slot)
        if key is None:
            raise _Status(SW.REFERENCED_DATA_NOT_FOUND)
        return spec, key

    # --- key error counters ----------------------------------------------------------------

    def _key_usable(self, slot: KeySlot) -> None:
        """6983 when the key's error counter is exhausted."""
        if self.state.key_tries.get(slot, self._ix.key_by_slot[slot].tries) <= 0:
            raise _Status(SW.AUTH_METHOD_BLOCKED)

    def _key_failed(self, slot: KeySlot) -> int:
        """Count one failure of the key (persisted at once); returns the tries left."""
        left = max(self.state.key_tries.get(slot, self._ix.key_by_slot[slot].tries) - 1, 0)
        self.state.key_tries[slot] = left
        self._persist()
        return left

    def _key_succeeded(self, slot: KeySlot) -> None:
        if self.state.key_tries.pop(slot, None) is not None:
            self._persist()

    def _external_authenticate(self, cmd: CommandApdu) -> bytes:
        """EXTERNAL AUTHENTICATE. A wrong cryptogram answers ``63Cx`` (x tries left of the
        key's error counter) and, at 0, ``6983``: the key is blocked until the issuer resets
        its counter (``84 2C 03 <key id>``, :meth:`_reset_key_counter`)."""
        if cmd.p1 != 0:
            raise _Status(SW.INCORRECT_P1P2)
        spec, key = self._key_in_scope(cmd.p2)
        self._key_usable(spec.slot)
        expected_len = 8 if self.alg is Algorithm.DES3 else 16
        if len(cmd.data) != expected_len:
            raise _Status(SW.WRONG_LENGTH)
        challenge, self.challenge = self.challenge, None
        if challenge is None or len(challenge) != 8:
            raise _Status(SW.REFERENCE_DATA_INVALIDATED)
        expected = keyscheme.external_auth_cryptogram(key, challenge, self.alg)
        if not hmac.compare_digest(expected, cmd.data):
            self.auth.pop(spec.slot, None)
            if self.channel and self.channel[0] is spec.slot:
                self.channel = None
            left = self._key_failed(spec.slot)
            raise _Status(0x63C0 | left if left else SW.AUTH_METHOD_BLOCKED)
        self._key_succeeded(spec.slot)
        self.auth[spec.slot] = self._ix.key_df[spec.slot]
        self.channel = (spec.slot, challenge)
        return b""

    def _internal_authenticate(self, cmd: CommandApdu) -> bytes:
        if cmd.p1 != 0:
            raise _Status(SW.INCORRECT_P1P2)
        if cmd.p2 == sm2.SM2_KEY_REF:  # the chip's SM2 signature (cardspec.sm2)
            if self.state.sm2_private is None:
                raise _Status(SW.REFERENCED_DATA_NOT_FOUND)
            if not 1 <= len(cmd.data) <= 64:
                raise _Status(SW.WRONG_LENGTH)
            return sm2.sign(int.from_bytes(self.state.sm2_private, "big"), cmd.data)
        _, irk_spec = self.profile.key(KeySlot.IRK)
        if cmd.p2 not in (0, irk_spec.key_id):
            raise _Status(SW.REFERENCED_DATA_NOT_FOUND)
        _, key = self._key_in_scope(irk_spec.key_id)
        if len(cmd.data) != 16:
            raise _Status(SW.WRONG_LENGTH)
        return keyscheme.internal_auth_response(key, cmd.data[:8], cmd.data[8:], self.alg)

    # --- PINs ------------------------------------------------------------------------------

    def _pin_in_scope(self, ref: int) -> tuple[str, PinSpec]:
        for path, spec in self._ix.pins_by_ref.get(ref, ()):
            if _within(self.current_df, path):
                return path, spec
        raise _Status(SW.REFERENCED_DATA_NOT_FOUND)

    def _pin_state(self, spec: PinSpec) -> PinState:
        st = self.state.pins.get(spec.name)
        if st is None:
            raise _Status(SW.REFERENCED_DATA_NOT_FOUND)
        return st

    @staticmethod
    def _pin_block_valid(spec: PinSpec, block: bytes) -> bool:
        text = block.hex().upper()
        if spec.fmt is PinFormat.CN:
            digits = text.rstrip("F")
            if len(text) - len(digits) > 1:
                return False
        else:
            if len(block) != 8 or text[0] != "2":
                return False
            n = int(text[1], 16)
            digits, rest = text[2 : 2 + n], text[2 + n :]
            if rest.strip("F"):
                return False
        return digits.isdigit() and spec.min_digits <= len(digits) <= spec.max_digits

    def _verify_against(self, path: str, spec: PinSpec, block: bytes) -> PinState:
        st = self._pin_state(spec)
        if st.tries_left == 0:
            raise _Status(SW.AUTH_METHOD_BLOCKED)
        if not hmac.compare_digest(self.state.pin_digest(block), st.digest):
            st.tries_left -= 1
            self.verified.pop(spec.name, None)
            self._persist()
            raise _Status(0x63C0 | st.tries_left if st.tries_left else SW.AUTH_METHOD_BLOCKED)
        if st.tries_left != spec.tries:
            st.tries_left = spec.tries
            self._persist()
        self.verified[spec.name] = path
        return st

    def _verify(self, cmd: CommandApdu) -> bytes:
        if cmd.p1 != 0:
            raise _Status(SW.INCORRECT_P1P2)
        path, spec = self._pin_in_scope(cmd.p2)
        if not cmd.data:
            st = self._pin_state(spec)
            if spec.name in self.verified:
                return b""
            raise _Status(0x63C0 | st.tries_left if st.tries_left else SW.AUTH_METHOD_BLOCKED)
        self._verify_against(path, spec, cmd.data)
        return b""

    def _set_new_pin(self, spec: PinSpec, st: PinState, block: bytes) -> None:
        if not self._pin_block_valid(spec, block):
            raise _Status(SW.WRONG_DATA)
        digest = self.state.pin_digest(block)
        if st.initial_digest is not None and hmac.compare_digest(digest, st.initial_digest):
            raise _Status(SW.WRONG_DATA)  # never back to the initial PIN
        st.digest = digest
        st.tries_left = spec.tries
        st.must_change = False

    def _split_old_new(self, spec: PinSpec, data: bytes) -> tuple[bytes, bytes]:
        if spec.fmt is PinFormat.ISO9564_2:
            if len(data) != 16:
                raise _Status(SW.WRONG_LENGTH)
            return data[:8], data[8:]
        sep = data.find(b"\xff")
        if sep <= 0 or sep == len(data) - 1:
            raise _Status(SW.WRONG_DATA)
        return data[:sep], data[sep + 1 :]

    def _change(self, cmd: CommandApdu) -> bytes:
        if cmd.cla & sm.SM_CLA:
            return self._unblock(cmd)
        if cmd.p1 != 0:
            raise _Status(SW.INCORRECT_P1P2)
        return self._change_pin(cmd.p2, cmd.data)

    def _change_pin(self, ref: int, data: bytes) -> bytes:
        path, spec = self._pin_in_scope(ref)
        old, new = self._split_old_new(spec, data)
        st = self._verify_against(path, spec, old)
        self._set_new_pin(spec, st, new)
        self._persist()
        return b""

    def _pboc_change_pin(self, cmd: CommandApdu) -> bytes:
        if cmd.p1 != 0x01 or cmd.p2 != 0x00:
            raise _Status(SW.INCORRECT_P1P2)
        return self._change_pin(0x00, cmd.data)

    def _unblock(self, cmd: CommandApdu) -> bytes:
        if not cmd.cla & sm.SM_CLA:
            raise _Status(SW.SM_DATA_MISSING)
        if cmd.ins == 0x2C and cmd.p1 == 0x03:
            return self._reset_key_counter(cmd)
        if cmd.p1 != 0:
            raise _Status(SW.INCORRECT_P1P2)
        _, spec = self._pin_in_scope(cmd.p2)
        st = self._pin_state(spec)
        if spec.unblock_key is None:
            raise _Status(SW.CONDITIONS_NOT_SATISFIED)
        key = self.state.keys.get(spec.unblock_key)
        if key is None:
            raise _Status(SW.REFERENCED_DATA_NOT_FOUND)
        if self.channel is not None and self.channel[0] is spec.unblock_key:
            iv = self.channel[1]
        else:
            challenge, self.challenge = self.challenge, None
            if challenge is None:
                raise _Status(SW.REFERENCE_DATA_INVALIDATED)
            iv = challenge
        self._key_usable(spec.unblock_key)
        try:
            body, block = sm.unwrap_command(key, self.alg, cmd.header, cmd.data, iv)
        except SecurityError:
            self._key_failed(spec.unblock_key)
            raise
        self._key_succeeded(spec.unblock_key)
        if self.channel is not None and self.channel[0] is spec.unblock_key:
            self.channel = (spec.unblock_key, block)
        if body:
            try:
                new = keyscheme.decrypt_sensitive(key, body, self.alg)
            except ValueError:
                raise _Status(SW.WRONG_DATA) from None
            self._set_new_pin(spec, st, new)
            if spec.initial_must_change:
                # CHOICE: a reloaded PIN is set by the counter for the holder: must be changed
                st.initial_digest, st.must_change = st.digest, True
        st.tries_left = spec.tries
        self._persist()
        return b""

    def _reset_key_counter(self, cmd: CommandApdu) -> bytes:
        """RESET RETRY COUNTER of a key: ``84 2C 03 <key id>`` (ISO/IEC 7816-4 11.5.10, P1 03:
        no data), MAC'd in a channel opened by EXTERNAL AUTHENTICATE with the application's
        master key DMK (the issuer's HSM computes both). CHOICE (LD/T 32.4 not public): the DMK
        resets the keys of the DF that declares it and of the DFs below it, itself excepted: a
        blocked DMK cannot be reset on the card (the card is replaced). The bank application's
        keys are outside the DMK's DF and are not reset by the card centre."""
        data, mac_slot = self._unwrap(cmd)
        if data:
            raise _Status(SW.WRONG_LENGTH)
        found = self._ix.keys_by_id.get(cmd.p2)
        if found is None:
            raise _Status(SW.REFERENCED_DATA_NOT_FOUND)
        path, spec = found
        master_df = self._ix.key_df.get(KeySlot.DMK)
        if (
            mac_slot is not KeySlot.DMK
            or master_df is None
            or spec.slot in (KeySlot.DMK, KeySlot.KMC)
            or not _within(path, master_df)
        ):
            raise _Status(SW.SECURITY_STATUS_NOT_SATISFIED)
        if self.state.key_tries.pop(spec.slot, None) is not None:
            self._persist()
        return b""

    def _block_df(self, cmd: CommandApdu) -> bytes:
        """APPLICATION BLOCK ``84 1E 00 00`` / UNBLOCK ``84 18 00 00`` of the selected
        application that is not a payment application (the social security DF, or one under
        it), MAC'd in a channel opened by EXTERNAL AUTHENTICATE with the application master key
        DMK, the form the PBOC application block takes (JR/T 0025: ``84 1E 00 P2 04 MAC``,
        under the application maintenance key). CHOICE (LD/T 32.5 not public): P2 00 only (the
        block is lifted by the DMK holder, the issuer; no permanent form), and the DMK blocks
        the DF that declares it and the DFs below it. A blocked application answers ``6283`` to
        its SELECT and ``6985`` to every command but GET CHALLENGE, EXTERNAL AUTHENTICATE,
        GET DATA and its own unblocking, in it and in the DFs below it (its holder and medical
        data, INTERNAL AUTHENTICATE and VERIFY included): a returned temporary card is dead."""
        data, mac_slot = self._unwrap(cmd)
        if cmd.p1 or cmd.p2:
            raise _Status(SW.INCORRECT_P1P2)
        if data:
            raise _Status(SW.WRONG_LENGTH)
        master_df = self._ix.key_df.get(KeySlot.DMK)
        if (mac_slot is not KeySlot.DMK or master_df is None
                or not _within(self.current_df, master_df)):  # fmt: skip
            raise _Status(SW.SECURITY_STATUS_NOT_SATISFIED)
        blocked = self.state.blocked_apps
        if cmd.ins == 0x1E and self.current_df not in blocked:
            blocked.append(self.current_df)
        elif cmd.ins == 0x18 and self.current_df in blocked:
            blocked.remove(self.current_df)
        self._persist()
        return b""

    # --- personalisation -------------------------------------------------------------------

    def _perso_channel(self, cmd: CommandApdu) -> tuple[bytes, bytes]:
        """Checks for a personalisation command; returns (plain data, KMC key)."""
        if not self.personalising:
            raise _Status(SW.CONDITIONS_NOT_SATISFIED)
        if not cmd.cla & sm.SM_CLA:
            raise _Status(SW.SM_DATA_MISSING)
        if self.channel is None or self.channel[0] is not KeySlot.KMC:
            raise _Status(SW.SECURITY_STATUS_NOT_SATISFIED)
        data, _ = self._unwrap(cmd)
        return data, self.state.keys[KeySlot.KMC]

    def _write_key(self, cmd: CommandApdu) -> bytes:
        data, kmc = self._perso_channel(cmd)
        if cmd.p1 == 0x00:
            # Key loading: RFC 5649 AES key wrap under the chip's KLK (keyscheme "Key loading");
            # a payload that fails the unwrap's integrity check is refused with 6A80.
            if self.state.klk is None:
                raise _Status(SW.CONDITIONS_NOT_SATISFIED)
            try:
                plain = keyscheme.unwrap_card_key(self.state.klk, data, self.alg)
            except ValueError:
                raise _Status(SW.WRONG_DATA) from None
        else:
            try:
                plain = keyscheme.decrypt_sensitive(kmc, data, self.alg)
            except ValueError:
                raise _Status(SW.WRONG_DATA) from None
        if cmd.p1 == 0x00:
            found = self._ix.keys_by_id.get(cmd.p2)
            if found is None:
                raise _Status(SW.REFERENCED_DATA_NOT_FOUND)
            slot = found[1].slot
            if slot is KeySlot.KMC:
                raise _Status(SW.CONDITIONS_NOT_SATISFIED)
            if len(plain) != self.alg.key_length:
                raise _Status(SW.WRONG_DATA)
            self.state.keys[slot] = plain
        elif cmd.p1 == 0x01:
            specs = self._ix.pins_by_ref.get(cmd.p2)
            if not specs:
                raise _Status(SW.REFERENCED_DATA_NOT_FOUND)
            spec = specs[0][1]
            if not self._pin_block_valid(spec, plain):
                raise _Status(SW.WRONG_DATA)
            digest = self.state.pin_digest(plain)
            self.state.pins[spec.name] = PinState(
                digest=digest,
                tries_left=spec.tries,
                initial_digest=digest if spec.initial_must_change else None,
                must_change=spec.initial_must_change,
            )
        else:
            raise _Status(SW.INCORRECT_P1P2)
        self._persist()
        return b""

    def _set_status(self, cmd: CommandApdu) -> bytes:
        if cmd.p1 != 0x80 or cmd.p2 != 0x0F:
            raise _Status(SW.INCORRECT_P1P2)
        self._perso_channel(cmd)
        missing = [k.slot for _, k in self.profile.key_specs() if k.slot not in self.state.keys]
        unset = [p.name for _, p in self.profile.pin_specs() if p.name not in self.state.pins]
        if missing or unset:
            raise _Status(SW.CONDITIONS_NOT_SATISFIED)
        self.state.life_cycle = LifeCycle.SECURED
        del self.state.keys[KeySlot.KMC]
        self.state.klk = None
        self._persist()
        self._reset_session()
        return b""

    def _generate_key_pair(self, cmd: CommandApdu) -> bytes:
        """GENERATE ASYMMETRIC KEY PAIR (SM2, ``cardspec.sm2``): personalisation, MAC'd."""
        if cmd.p1 != 0 or cmd.p2 != sm2.SM2_KEY_REF:
            raise _Status(SW.INCORRECT_P1P2)
        if self.alg is not Algorithm.SM4:
            raise _Status(SW.FUNCTION_NOT_SUPPORTED)
        self._perso_channel(cmd)
        if self.state.sm2_private is not None:
            raise _Status(SW.CONDITIONS_NOT_SATISFIED)
        private, public = sm2.generate()
        self.state.sm2_private = private.to_bytes(32, "big")
        self._persist()
        return tlv.encode(0x7F49, tlv.encode(0x86, public))

    def _put_data(self, cmd: CommandApdu) -> bytes:
        """PUT DATA of the certificates (``cardspec.sm2``): personalisation, MAC'd."""
        tag = (cmd.p1 << 8) | cmd.p2
        if tag not in (sm2.DO_CARD_CERTIFICATE, sm2.DO_ISSUER_CERTIFICATE):
            raise _Status(SW.REFERENCED_DATA_NOT_FOUND)
        data, _ = self._perso_channel(cmd)
        try:
            cert = sm2.parse_certificate(data)
        except ValueError:
            raise _Status(SW.WRONG_DATA) from None
        if tag == sm2.DO_CARD_CERTIFICATE:
            mine = self.state.sm2_private
            if mine is None or sm2.public_key(int.from_bytes(mine, "big")) != cert.public:
                raise _Status(SW.WRONG_DATA)  # a certificate of another key
        self.state.data_objects[tag] = data
        self._persist()
        return b""

    # --- GET DATA --------------------------------------------------------------------------

    def _get_data(self, cmd: CommandApdu) -> bytes:
        tag = (cmd.p1 << 8) | cmd.p2
        if tag == 0xDF10:
            return tlv.encode(tag, bytes([self.state.life_cycle.gp_code]))
        if tag == 0xDF12:
            return tlv.encode(tag, self.state.chip_serial)
        if tag in self.state.data_objects:  # the certificates (cardspec.sm2)
            return self.state.data_objects[tag]
        if tag in (0xDF11, 0x9F17):
            out = b""
            for name, (path, spec) in self._ix.pins_by_name.items():
                if tag == 0x9F17 and spec.fmt is not PinFormat.ISO9564_2:
                    continue
                if not _within(self.current_df, path) and tag == 0x9F17:
                    continue
                st = self.state.pins.get(name)
                if st is None:
                    continue
                if tag == 0x9F17:
                    return tlv.encode(tag, bytes([st.tries_left]))
                out += bytes([spec.ref, st.tries_left, int(st.must_change)])
            if tag == 0x9F17:
                raise _Status(SW.REFERENCED_DATA_NOT_FOUND)
            return tlv.encode(tag, out)
        raise _Status(SW.REFERENCED_DATA_NOT_FOUND)
