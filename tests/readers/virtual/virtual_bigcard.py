"""A card factory for the virtual reader stack: the social security profile with one extra
application holding a 1,000-byte transparent file (free read and write), for the
extended-length and command-chaining tests through PC/SC (``virtual_bigcard:load``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from cardspec import perso
from cardspec import profile as P
from cardspec.emulator import Card
from cardspec.keyscheme import KeySlot
from cardspec.reader import InProcessReader

BIG_DF_NAME = bytes.fromhex("D15600000500")
BIG_SIZE = 1000


def profile() -> P.CardProfile:
    big = P.DedicatedFile(
        name="PUB", fid=0xDF00, df_name=BIG_DF_NAME, label="public data",
        files=(P.ElementaryFile("EF0A", 0xEF0A, 0x0A, P.FileStructure.TRANSPARENT,
                                P.RecordLayout.FIXED, (P.Element(1, "blob", BIG_SIZE, P.Fmt.B),),
                                P.FREE, P.FREE),),
    )  # fmt: skip
    prof = P.social_security_profile(financial=False).with_application(big, "SSSE")
    return P.register_profile(prof)


def load(path: str | Path) -> Card:
    """The factory: register the profile in the card server's process, load the image."""
    profile()
    return Card.load(path)


def make_image(path: Path) -> Path:
    """A personalised card of :func:`profile` saved at ``path``."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "cardspec"))  # its helpers
    from cardspec_helpers import blank, perso_data, software_crypto

    prof = profile()
    card = blank(profile=prof, path=path)
    data = replace(perso_data(), financial=None)
    perso.personalise(InProcessReader(card), software_crypto(), data, prof)
    assert KeySlot.KMC not in card.state.keys
    return path
