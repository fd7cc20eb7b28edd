"""The client kit: a small httpx client of the API and the terminal side of a verification.

    client = YktClient.with_client_credentials("https://api.example", client_id, secret)
    verdict = verify_card_in_reader(client, reader, application="medical")

:func:`verify_card_in_reader` is what a hospital terminal does on every visit: read the card's
public identifiers (EF05), ask the service for a challenge, send INTERNAL AUTHENTICATE to the
card, post the answer and get the verdict. :meth:`YktClient.status_feed` downloads the signed
status feed and checks its signature against the published key while streaming.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx

from cardspec.cardops import (
    internal_authenticate,
    read_card_public,
    read_certificates,
    sm2_internal_authenticate,
)
from cardspec.profile import DEFAULT_PROFILE, CardProfile
from cardspec.reader import Reader
from issuance.models import CardStatus
from issuance.services import ecard_token
from issuance.services.status_feed import FeedSummary, verify_feed

#: A feed older than this is refused (it would hide the cards refused since).
FEED_MAX_AGE = timedelta(hours=1)
log = logging.getLogger("api.client")


class UnpinnedFeedKeyWarning(UserWarning):
    """The status feed was checked against a key fetched from the server that sent it."""


def _lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The raw lines of a byte stream, each with its ``\n``; a last line without one is
    yielded as it is (the feed check refuses it)."""
    rest = b""
    for chunk in chunks:
        rest += chunk
        *complete, rest = rest.split(b"\n")
        for line in complete:
            yield line + b"\n"
    if rest:
        yield rest


class ApiClientError(Exception):
    """The service answered an error (``code``, ``message``, ``field`` from its error body)."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.field = status, code, message, field


def _raise_for(resp: httpx.Response) -> None:
    if resp.status_code < 400:
        return
    try:
        err = resp.json()["error"]
        raise ApiClientError(resp.status_code, err["code"], err["message"], err.get("field"))
    except (ValueError, KeyError, TypeError):
        raise ApiClientError(resp.status_code, "http_error", resp.text[:200]) from None


@dataclass
class YktClient:
    http: httpx.Client

    @classmethod
    def with_token(cls, base_url: str, token: str, **kw: Any) -> YktClient:
        return cls(
            httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, **kw)
        )

    @classmethod
    def with_client_credentials(
        cls, base_url: str, client_id: str, client_secret: str, scope: str | None = None, **kw: Any
    ) -> YktClient:
        http = httpx.Client(base_url=base_url, **kw)
        data = {"grant_type": "client_credentials"}
        if scope:
            data["scope"] = scope
        resp = http.post("/v1/oauth/token", data=data, auth=(client_id, client_secret))
        _raise_for(resp)
        http.headers["Authorization"] = f"Bearer {resp.json()['access_token']}"
        return cls(http)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> YktClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _json(self, method: str, url: str, **kw: Any) -> Any:
        resp = self.http.request(method, url, **kw)
        _raise_for(resp)
        return resp.json()

    # verification -----------------------------------------------------------------------
    def challenge(self) -> dict[str, Any]:
        return dict(self._json("POST", "/v1/verifications/challenge"))

    def verify(
        self,
        challenge_id: str,
        card_identification_code: str,
        card_number: str,
        response: bytes,
        application: str = "social_security",
        include_holder: bool = False,
        include_photo: bool = False,
        sm2_proof: tuple[bytes, bytes] | None = None,
    ) -> dict[str, Any]:
        """``sm2_proof``: (card certificate, the chip's SM2 signature over the challenge), the
        second proof of an SM4 card (``cardspec.sm2``)."""
        body: dict[str, Any] = {
            "challenge_id": challenge_id,
            "card_identification_code": card_identification_code,
            "card_number": card_number,
            "response": response.hex(),
            "application": application,
            "include_holder": include_holder,
            "include_photo": include_photo,
        }
        if sm2_proof is not None:
            body["sm2_card_certificate"] = sm2_proof[0].hex()
            body["sm2_signature"] = sm2_proof[1].hex()
        return dict(self._json("POST", "/v1/verifications", json=body))

    def verify_ecard(
        self, code: str, include_holder: bool = False, include_photo: bool = False
    ) -> dict[str, Any]:
        """The online check of a scanned e-card code (``POST /v1/ecard/verifications``)."""
        body = {"code": code, "include_holder": include_holder, "include_photo": include_photo}
        return dict(self._json("POST", "/v1/ecard/verifications", json=body))

    # status feed ------------------------------------------------------------------------
    def public_key_pem(self) -> bytes:
        return str(self._json("GET", "/v1/status-feed/public-key")["public_key_pem"]).encode()

    def status_feed(
        self,
        since: int | None = None,
        on_entry: Callable[[dict[str, Any]], None] | None = None,
        public_key_pem: bytes | None = None,
        *,
        max_age: timedelta | None = FEED_MAX_AGE,
    ) -> FeedSummary:
        """Download and verify the feed (raises IntegrityError if it does not verify, is not
        strictly well formed, or was generated longer than ``max_age`` ago).

        ``public_key_pem``: the feed key pinned by the terminal (``ykt audit public-key`` on
        the card centre's side, handed over out of band). Without it the key is fetched from
        the same server as the feed, which proves nothing against that server or whoever
        stands in for it: a loud :class:`UnpinnedFeedKeyWarning` says so."""
        pem = public_key_pem
        if pem is None:
            message = (
                "status feed: no pinned public key; trusting the key served by the same server "
                "(pin it: public_key_pem=...)"
            )
            log.warning(message)
            warnings.warn(UnpinnedFeedKeyWarning(message), stacklevel=2)
            pem = self.public_key_pem()
        params = {} if since is None else {"since": since}
        with self.http.stream("GET", "/v1/status-feed", params=params) as resp:
            if resp.status_code >= 400:
                resp.read()
                _raise_for(resp)
            return verify_feed(_lines(resp.iter_bytes()), pem, on_entry, max_age=max_age)

    # anything else ----------------------------------------------------------------------
    def get(self, url: str, **kw: Any) -> Any:
        return self._json("GET", url, **kw)

    def post(self, url: str, json: Any = None, **kw: Any) -> Any:
        return self._json("POST", url, json=json, **kw)


def card_profile_in_reader(reader: Reader, pin_tries: int = 3) -> CardProfile:
    """The social security profile of the card in ``reader``, from the algorithm its FCI
    announces (``9F0C { 86 01 xx }``: 3DES second generation, SM4 / AES third)."""
    from cardspec.cardops import fci_algorithm, select_df
    from cardspec.keyscheme import Algorithm
    from cardspec.profile import social_security_profile

    reader.connect()
    try:
        alg = fci_algorithm(select_df(reader, DEFAULT_PROFILE, "SSSE", fci=True))
    finally:
        reader.disconnect()
    if alg is DEFAULT_PROFILE.algorithm:
        return DEFAULT_PROFILE
    generation = 2 if alg is Algorithm.DES3 else 3
    return social_security_profile(generation=generation, algorithm=alg, pin_tries=pin_tries)


def verify_card_in_reader(
    client: YktClient,
    reader: Reader,
    *,
    application: str = "social_security",
    include_holder: bool = False,
    include_photo: bool = False,
    profile: CardProfile = DEFAULT_PROFILE,
    sm2: bool = False,
) -> dict[str, Any]:
    """The whole terminal flow against the card in ``reader``; returns the service's verdict.
    ``sm2`` (SM4 cards): also send the card certificate and the chip's SM2 signature over the
    challenge, checked by the service as a second proof."""
    public = read_card_public(reader, profile)
    proof = None
    try:
        ch = client.challenge()
        challenge = bytes.fromhex(ch["challenge"])
        answer = internal_authenticate(reader, challenge[:8], challenge[8:])
        if sm2:
            certificate, _ = read_certificates(reader)
            proof = (certificate, sm2_internal_authenticate(reader, challenge))
    finally:
        reader.disconnect()
    return client.verify(
        ch["challenge_id"], public.card_identification_code, public.card_number, answer,
        application, include_holder, include_photo, proof,
    )  # fmt: skip


# --- e-card codes offline -------------------------------------------------------------------


@dataclass(frozen=True)
class OfflineEcardVerdict:
    valid: bool
    reason: str | None
    ecard_id: str | None = None
    loss_authorised: bool = False


@dataclass
class OfflineEcardVerifier:
    """A terminal with no network verifies e-card codes with the issuer's public key (pinned,
    handed over out of band) and the last signed status feed it downloaded
    (:meth:`YktClient.status_feed`, or a saved file: :meth:`load_feed`).

    What it checks: the code's structure, the issuer's signature, its issue time and expiry,
    and the card's status in the feed (lost, cancelled, replaced ... refuse; a provisionally
    lost card's code only if it carries the holder's authorisation, which the service puts in
    codes made while that authorisation holds). What it cannot: a code used once already (it
    keeps no shared record: a screenshot replayed within the code's life, at most ``[ecard]
    code_seconds + code_grace_seconds``, passes), and a status change newer than its feed."""

    public_key_pem: bytes
    #: card reference (``ecard_token.card_ref``) -> card status, for every card the feed names
    statuses: dict[bytes, str] = field(default_factory=dict)
    sequence: int | None = None

    def on_entry(self, entry: dict[str, Any]) -> None:
        """Take one (already signature-checked) feed entry: a full feed or a delta."""
        ref = ecard_token.card_ref(str(entry["card_number"]))
        if entry.get("refused"):
            self.statuses[ref] = str(entry["status"])
        else:
            self.statuses.pop(ref, None)

    def load_feed(
        self, lines: Iterable[bytes], *, max_age: timedelta | None = FEED_MAX_AGE
    ) -> FeedSummary:
        """Read a saved feed (full, then deltas in order), checking its signature against
        the pinned key; raise IntegrityError if it does not verify (nothing is taken then)."""
        seen: list[dict[str, Any]] = []
        summary = verify_feed(lines, self.public_key_pem, seen.append, max_age=max_age)
        if summary.kind == "full":
            self.statuses.clear()
        for entry in seen:
            self.on_entry(entry)
        self.sequence = summary.sequence
        return summary

    def verify(self, code: str, now: int | None = None) -> OfflineEcardVerdict:
        """The verdict on a scanned code, offline."""
        import time

        at = int(time.time()) if now is None else now
        checked = ecard_token.check_code(code, self.public_key_pem, at)
        if isinstance(checked, ecard_token.CodeReason):
            return OfflineEcardVerdict(False, str(checked))
        status = self.statuses.get(checked.card_ref, CardStatus.ACTIVE)
        reason = ecard_token.card_refusal(status, checked.loss_authorised)
        return OfflineEcardVerdict(
            reason is None, reason, checked.ecard_id.hex(),
            checked.loss_authorised and reason is None,
        )  # fmt: skip
