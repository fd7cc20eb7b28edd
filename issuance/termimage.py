"""Show an image inline in a terminal that can (iTerm2's inline images, also WezTerm; kitty's
graphics protocol), for ``ykt app show``. Elsewhere: nothing is written and the caller says how
to get the file (``--photo-out``)."""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Mapping
from typing import TextIO


def protocol(environ: Mapping[str, str] | None = None) -> str | None:
    """``iterm2``, ``kitty`` or None, from the terminal's own variables."""
    env = os.environ if environ is None else environ
    if env.get("TERM_PROGRAM") in ("iTerm.app", "WezTerm") or env.get("LC_TERMINAL") == "iTerm2":
        return "iterm2"
    if env.get("TERM") == "xterm-kitty" or env.get("KITTY_WINDOW_ID"):
        return "kitty"
    return None


def sequence(image: bytes, proto: str, *, width_cells: int = 20) -> str:
    """The escape sequence that draws ``image`` (JPEG or PNG bytes) with ``proto``."""
    if proto == "iterm2":
        data = base64.b64encode(image).decode()
        return (
            f"\x1b]1337;File=inline=1;size={len(image)};width={width_cells};"
            f"preserveAspectRatio=1:{data}\x07\n"
        )
    if proto == "kitty":  # kitty takes PNG (f=100), sent in chunks of 4096 base64 characters
        from PIL import Image

        with Image.open(io.BytesIO(image)) as im:
            buf = io.BytesIO()
            im.save(buf, format="PNG")
        data = base64.b64encode(buf.getvalue()).decode()
        chunks = [data[i : i + 4096] for i in range(0, len(data), 4096)] or [""]
        out = []
        for i, chunk in enumerate(chunks):
            more = 1 if i < len(chunks) - 1 else 0
            head = f"a=T,f=100,c={width_cells}," if i == 0 else ""
            out.append(f"\x1b_G{head}m={more};{chunk}\x1b\\")
        return "".join(out) + "\n"
    raise ValueError(f"unknown image protocol {proto!r}")


def show_inline(image: bytes, stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """Draw ``image`` on ``stream`` if it is a terminal that can; True if drawn."""
    proto = protocol(environ)
    if proto is None or not stream.isatty():
        return False
    stream.write(sequence(image, proto))
    stream.flush()
    return True
