"""A throwaway *bank side* for the demo and the tests (never the product): it answers the card
centre's request file (:func:`issuance.bank.request_file`) with a response file as a bank's
system would, opening one account per card: a random 19-digit PAN in the bank's BIN with its
Luhn digit, PSN ``00``, an expiry, service code ``220`` and an account reference; and it makes
the bank's issuer master keys as custodian components with their KCVs for the key ceremony.

The card centre's side is the product (:mod:`issuance.bank`, :mod:`hsm.ceremony`): this module
only plays the bank.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable
from datetime import UTC, date, datetime

from cardspec import keyscheme
from cardspec.ids import luhn_digit
from cardspec.keyscheme import Algorithm, KeySlot

#: The demo bank's BIN (a UnionPay-style 62 range; any 6 digits would do for the demo).
DEMO_BIN = "621226"


def new_pan(bin_: str = DEMO_BIN, length: int = 19) -> str:
    """A random PAN in ``bin_`` with a correct Luhn check digit."""
    body = bin_ + "".join(secrets.choice("0123456789") for _ in range(length - len(bin_) - 1))
    return body + luhn_digit(body)


def answer_request(
    request: str,
    bin_: str = DEMO_BIN,
    *,
    expiry: date | None = None,
    psn: str = "00",
    service_code: str = "220",
    skip: Iterable[str] = (),
    now: datetime | None = None,
) -> str:
    """The bank's response file to ``request`` (format ``docs/reference/bank-files.md``): one
    account per requested card but those in ``skip`` (card numbers the bank does not answer
    yet)."""
    lines = request.rstrip("\n").split("\n")
    head = lines[0].split("|")
    if head[:4] != ["H", "YKTBANK", "1", "REQ"]:
        raise ValueError("not a request file")
    request_id, bank = head[4], head[5]
    exp = expiry or date((now or datetime.now(UTC)).year + 10, 12, 31)
    skipped = set(skip)
    body: list[str] = []
    for line in lines[1:-1]:
        card_number = line.split("|")[2]
        if card_number in skipped:
            continue
        ref = "AC" + secrets.token_hex(6).upper()
        body.append(f"D|{len(body) + 1}|{card_number}|{new_pan(bin_)}|{psn}|{exp:%y%m}|"
                    f"{service_code}|{ref}")  # fmt: skip
    stamp = f"{(now or datetime.now(UTC)):%Y-%m-%dT%H:%M:%SZ}"
    return "\n".join([f"H|YKTBANK|1|RSP|{request_id}|{bank}|{stamp}|{len(body)}", *body,
                      f"T|{len(body)}"]) + "\n"  # fmt: skip


def imk_components(
    alg: Algorithm = Algorithm.DES3, parts: int = 2, key: bytes | None = None
) -> tuple[bytes, list[bytes], list[bytes]]:
    """A bank issuer master key (``key``, or random) as ``parts`` custodian components with
    their KCVs: ``(key, components, kcvs)``."""
    key = key if key is not None else os.urandom(16)
    comps = [os.urandom(16) for _ in range(parts - 1)]
    last = bytearray(key)
    for comp in comps:
        for i, b in enumerate(comp):
            last[i] ^= b
    comps.append(bytes(last))
    return key, comps, [keyscheme.kcv(c, alg) for c in comps]


def demo_bank_toml(bank_code: str, key_domain: str, bin_: str = DEMO_BIN) -> str:
    """The ``[banks.<code>]`` settings of a demo bank, as a settings file's lines."""
    return f'[banks.{bank_code}]\nkey_domain = "{key_domain}"\nbins = ["{bin_}"]\n'


#: The bank's issuer master keys, one per per-card EMV key.
IMK_SLOTS = (KeySlot.FIN_AC, KeySlot.FIN_SMI, KeySlot.FIN_SMC)
