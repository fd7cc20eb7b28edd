"""A tiny file-system card for the virtual reader tests (independent of cardspec.emulator).

Image (JSON): ``{"atr": "3B...", "files": {"3F00/2F01": "hex", ...}, "names": {"hex DF name":
"3F00/DF01"}}``. Commands: SELECT by FID (``00 A4 00 00 02 fid``, relative to the current DF or
the MF), SELECT by DF name (``00 A4 04 00 Lc name``, answers an FCI with tag 84), READ BINARY
(``00 B0 off off Le``), GET RESPONSE for data held back by a case-4 SELECT sent without Le (T=0
style ``61xx``), and ``80 CA 00 00 Le`` (GET DATA: a counter of APDUs since power on).
"""

from __future__ import annotations

import json
from pathlib import Path

ATR = bytes.fromhex("3B8880010000000000000000" + "00")


def _sw(sw: int) -> bytes:
    return sw.to_bytes(2, "big")


class FileCard:
    def __init__(self, atr: bytes, files: dict[str, bytes], names: dict[bytes, str]) -> None:
        self._atr = atr
        self.files = files
        self.names = names
        self.current_df = "3F00"
        self.current_ef: str | None = None
        self.pending = b""
        self.counter = 0

    @classmethod
    def load(cls, path: Path) -> FileCard:
        data = json.loads(Path(path).read_text())
        return cls(
            bytes.fromhex(data["atr"]),
            {k: bytes.fromhex(v) for k, v in data["files"].items()},
            {bytes.fromhex(k): v for k, v in data.get("names", {}).items()},
        )

    @staticmethod
    def write_image(path: Path, files: dict[str, bytes], names: dict[bytes, str],
                    atr: bytes = ATR) -> Path:  # fmt: skip
        path.write_text(json.dumps({
            "atr": atr.hex(),
            "files": {k: v.hex() for k, v in files.items()},
            "names": {k.hex(): v for k, v in names.items()},
        }))  # fmt: skip
        return path

    def atr(self) -> bytes:
        return self._atr

    def power_on(self) -> None:
        self.current_df, self.current_ef, self.pending, self.counter = "3F00", None, b"", 0

    def power_off(self) -> None:
        self.power_on()

    def process(self, command: bytes) -> bytes:
        self.counter += 1
        _cla, ins, p1, p2 = command[:4]
        body = command[4:]
        if ins == 0xC0:
            data, self.pending = self.pending, b""
            return data + _sw(0x9000) if data else _sw(0x6985)
        self.pending = b""
        if ins == 0xCA:
            return self.counter.to_bytes(4, "big") + _sw(0x9000)
        if ins == 0xA4:
            lc = body[0]
            data = body[1 : 1 + lc]
            has_le = len(body) > 1 + lc
            if p1 == 0x04:
                path = self.names.get(bytes(data))
                if path is None:
                    return _sw(0x6A82)
                self.current_df, self.current_ef = path, None
                fci = b"\x6f" + bytes([len(data) + 2]) + b"\x84" + bytes([len(data)]) + data
                if not has_le:  # T=0 style: data waits for GET RESPONSE
                    self.pending = fci
                    return bytes([0x61, len(fci)])
                return fci + _sw(0x9000)
            fid = data.hex().upper()
            for candidate in (f"{self.current_df}/{fid}", f"3F00/{fid}", fid):
                if candidate in self.files:
                    self.current_ef = candidate
                    return _sw(0x9000)
                if candidate in self.names.values():
                    self.current_df, self.current_ef = candidate, None
                    return _sw(0x9000)
            return _sw(0x6A82)
        if ins == 0xB0:
            if self.current_ef is None:
                return _sw(0x6986)
            content = self.files[self.current_ef]
            offset = (p1 << 8) | p2
            le = body[0] if body else 0
            if offset > len(content):
                return _sw(0x6B00)
            chunk = content[offset:]
            if le == 0:  # no Le or Le=00: up to 256 bytes
                return chunk[:256] + _sw(0x9000)
            if le > len(chunk):  # wrong Le: tell the terminal the right one
                return bytes([0x6C, len(chunk)])
            return chunk[:le] + _sw(0x9000)
        return _sw(0x6D00)


def load(path: Path) -> FileCard:
    return FileCard.load(path)
