"""A throwaway *bank side* for the demo and the tests (never the product): it answers the card
centre's request file (:func:`issuance.bank.request_file`) with a response file as a bank's
system would, opening one account per card: a random 19-digit PAN in the bank's BIN with its
Luhn digit, PSN ``00``, an expiry, service code ``220`` and an account reference (a replaced
card's account keeps its PAN with the next PAN sequence number, :class:`BankLedger`); and it makes
the bank's issuer master keys as custodian components with their KCVs for the key ceremony.

The card centre's side is the product (:mod:`issuance.bank`, :mod:`hsm.ceremony`): this module
only plays the bank.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
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


@dataclass
class BankLedger:
    """The throwaway bank's own books: its accounts (account reference -> the PAN and the
    last PAN sequence number it gave) and the hotlist the card centre reported to it (card
    number, masked PAN, PSN, account reference, reason of each ``X`` line)."""

    accounts: dict[str, tuple[str, str]] = field(default_factory=dict)
    hotlist: list[tuple[str, ...]] = field(default_factory=list)

    @classmethod
    def of_responses(cls, texts: Iterable[str]) -> BankLedger:
        """The books as the bank's own response files (oldest first) wrote them."""
        ledger = cls()
        for text in texts:
            for line in text.splitlines():
                parts = line.split("|")
                if len(parts) == 8 and parts[0] == "D":
                    ledger.accounts[parts[7]] = (parts[3], parts[4])
        return ledger


def answer_request(
    request: str,
    bin_: str = DEMO_BIN,
    *,
    expiry: date | None = None,
    psn: str = "00",
    service_code: str = "220",
    skip: Iterable[str] = (),
    now: datetime | None = None,
    ledger: BankLedger | None = None,
) -> str:
    """The bank's response file to ``request`` (format ``docs/reference/bank-files.md``): one
    account per requested card (``D``) but those in ``skip`` (card numbers the bank does not
    answer yet). A replacement (``R``) keeps its account: the same PAN with the next PAN
    sequence number when ``ledger`` has the account, else another PAN of that account; the
    hotlist lines (``X``) go to ``ledger.hotlist``. New accounts are written to ``ledger``."""
    lines = request.rstrip("\n").split("\n")
    head = lines[0].split("|")
    if head[:4] != ["H", "YKTBANK", "1", "REQ"]:
        raise ValueError("not a request file")
    request_id, bank = head[4], head[5]
    exp = expiry or date((now or datetime.now(UTC)).year + 10, 12, 31)
    skipped = set(skip)
    body: list[str] = []
    for line in lines[1:-1]:
        kind, _, card_number, *rest = line.split("|")
        if kind == "X":
            if ledger is not None:
                ledger.hotlist.append((card_number, *rest))
            continue
        if card_number in skipped:
            continue
        if kind == "R" and ledger is not None and rest[-1] in ledger.accounts:
            ref, (pan, last) = rest[-1], ledger.accounts[rest[-1]]
            card_psn = f"{int(last) + 1:02d}"
        elif kind == "R":  # no books here: another PAN of the same account
            ref, pan, card_psn = rest[-1], new_pan(bin_), psn
        else:
            ref, pan, card_psn = "AC" + secrets.token_hex(6).upper(), new_pan(bin_), psn
        if ledger is not None:
            ledger.accounts[ref] = (pan, card_psn)
        body.append(f"D|{len(body) + 1}|{card_number}|{pan}|{card_psn}|{exp:%y%m}|"
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
