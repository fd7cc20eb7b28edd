"""Data preparation for a card bureau: cards/s against the raw HSM derive limit of the same run.

Measured in one run, on a throwaway SoftHSM2 token (DES3 masters, a bureau transport key, the
signing key), each measurement in forked children (the PKCS#11 module is loaded after the fork,
one session per process, as in the product):

* raw HSM derive rate: ``C_DeriveKey(CKM_DES3_ECB_ENCRYPT_DATA)`` + ``C_DestroyObject``
  called directly (:mod:`hsm.p11fast`, minimal template), in bursts of 600 run between cards
  inside each preparing process (same session, same moments: machine noise hits the limit
  and the measured rate alike); python-pkcs11's rate (``bench.hsm_derive._raw``, 2-3x
  slower: its own overhead, not the HSM's) is printed beside it for reference;
* keys per card: every key slot the card profile declares (KMC included: the bureau needs it);
* limit = raw derives/s / keys per card (cards/s if the HSM did nothing but derive);
* data preparation: per card, the complete personalisation data built from the card's fields
  (records encoded by the profile, PIN blocks) and every per-card key derived in the HSM,
  wrapped under the transport key, its KCV computed and the initial PINs encrypted, streamed
  into a signed bureau file on disk (``issuance.batches.bureau.write_bureau_file``), in 1 process
  and in 2 processes (two bureau files, one per process);
* peak RSS of a preparing process and its growth while streaming (extrapolated to 1,000,000
  cards, clearly labelled).

Targets (issue 7): ratio >= 0.70 of the limit; 1,000,000 cards in <= 15 min; < 1 GiB RSS.

Where the time goes (1 process, DES3, 11 keys, measured on the 2-core development machine):
derive+destroy 11 x 55-66 us (the limit itself); per-card HSM work beyond derivation: 11 wraps
under the file KEK (6 us each), 11 KCVs (C_EncryptInit + C_Encrypt, 6.5 us each) and 2 PIN
blocks, ~0.15 ms; Python, ~0.3 ms: the profile's record encoders (``plan_records`` and
``validate``, ~0.1 ms), JSON/hex encoding and the digest (~0.05 ms), the per-call overhead of
55 direct PKCS#11 calls and the card's own objects. Found and fixed on the way (each measured
here): python-pkcs11's per-call overhead (2-3x the HSM's own time: direct calls,
:mod:`hsm.p11fast`), private session objects (SoftHSM encrypts them in memory), the token
transport key on every wrap (file KEK, :mod:`hsm.export`), and SoftHSM2 keeping every destroyed
session object until C_Finalize (2.2 KiB per card, > 2 GiB per million: the module is
re-initialised every 2,000 cards). ``YKT_BENCH_PROFILE=1`` prints a cProfile of 500 cards.
Default run: a few thousand cards (``YKT_BENCH_DATAPREP_CARDS`` per measurement, default 1500);
every 1,000,000-card figure is an extrapolation. Run alone: ``python -m bench.dataprep``.

The figures above are the bureau writer on synthetic cards. :mod:`bench.dataprep_product`
(run at the end of :func:`main`) measures the product's own path, ``BatchRunner.prepare_all``
on a batch in the database, against the raw derive limit of that path in the same run.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import resource
import tempfile
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

from bench.hsm_derive import _raw
from cardspec import ids, keyscheme
from cardspec.keyscheme import Algorithm, KeySlot
from cardspec.perso import CardPersoData
from cardspec.profile import (
    DEFAULT_PROFILE,
    CardProfile,
    FinancialData,
    Holder,
    MedicalData,
    PensionData,
)
from hsm import ceremony, p11fast, softhsm
from hsm import pkcs11 as p11
from hsm.config import HsmConfig
from hsm.service import CardKeyRef, Pkcs11KeyService
from issuance.batches.bureau import write_bureau_file
from issuance.batches.prepared import PreparedCard
from issuance.settings import load_settings

DURATION = 2.0
CARDS = int(os.environ.get("YKT_BENCH_DATAPREP_CARDS", "5000"))
TRANSPORT = "bench-bureau"
RAW_EVERY = 100  # cards between two raw derive bursts
RSS_EVERY = 100  # cards between two RSS samples
RAW_BURST = 600  # derives per burst
MILLION = 1_000_000
PROFILE = DEFAULT_PROFILE
PAN, PSN = "6217000012345678901", "01"


def _config(root: Path) -> HsmConfig:
    return HsmConfig.from_settings(load_settings(environ={"YKT_DATA_DIR": str(root)}))


def _setup(config: HsmConfig) -> None:
    token = p11.open_token(config)
    ceremony.init_keys(token, Algorithm.DES3)
    ceremony.generate_transport_key(token, TRANSPORT)


def _citizen_id(n: int) -> str:
    birth = date(1950, 1, 1).toordinal() + n % 20000
    first17 = f"330106{date.fromordinal(birth):%Y%m%d}{n % 1000:03d}"
    return first17 + ids.citizen_id_check_char(first17)


def _body(n: int) -> str:
    digits = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    out = ""
    for _ in range(7):
        n, r = divmod(n, 36)
        out = digits[r] + out
    return "B" + out


def sample_cards(count: int, offset: int, profile: CardProfile = PROFILE) -> Iterator[PreparedCard]:
    """``count`` synthetic cards, their contents built one at a time (as data preparation
    builds them from the database rows)."""
    slots = tuple(s.slot for _, s in profile.key_specs() if s.slot is not KeySlot.KMC)
    for n in range(offset, offset + count):
        serial = hashlib.blake2b(n.to_bytes(8, "big"), digest_size=8).digest()
        cic = ids.make_card_identification_code("330182", serial)
        data = CardPersoData(
            card_identification_code=cic,
            card_number=ids.make_card_number(_body(n)),
            spec_version=profile.spec_version,
            issue_date=date(2025, 3, 1),
            expiry_date=date(2035, 3, 1),
            init_org_code="330100000001",
            holder=Holder(_citizen_id(n), "王小明", "1", "01", "330106", date(1980, 5, 17)),
            initial_pin=f"{(n * 7919) % 1_000_000:06d}",
            medical=MedicalData("310", "330182", "1", "11", date(2024, 1, 1)),
            pension=PensionData("1", "330182", date(2024, 1, 1), "11100"),
            financial=FinancialData(PAN, date(2035, 3, 31), PSN, "WANG XIAOMING"),
        )
        yield PreparedCard(
            card_id=n + 1,
            chip_serial=serial.hex().upper(),
            perso=data,
            key_ref=CardKeyRef(cic, 1, profile.algorithm, PAN, PSN),
            key_slots=slots,
            profile_name=profile.name,
        )


def _rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


class _InterleavedRaw:
    """Raw derive+destroy bursts run *between* cards in the preparing process (same session,
    same moments, so machine noise hits the limit and the measurement alike).

    The raw operation is the HSM's own: ``C_DeriveKey`` (class and key type only in the
    template) + ``C_DestroyObject`` called directly (:mod:`hsm.p11fast`), the fastest way this
    machine can ask SoftHSM2 for derivations; python-pkcs11's ``derive_key`` (what
    ``bench.hsm_derive`` measures) is 2-3x slower and is printed beside it, not used as the
    limit."""

    def __init__(self, config: HsmConfig, burst: int) -> None:
        ops = p11fast.fast_ops(str(config.module))
        if ops is None:
            raise RuntimeError("the PKCS#11 module exports no C_DeriveKey: no raw measurement")
        self.ops = ops
        self.token = p11.open_token(config)
        self.burst = burst
        self.template = p11fast.key_template(Algorithm.DES3, minimal=True)
        self.done = 0
        self.seconds = 0.0

    def run(self) -> None:
        with self.token.use() as session:
            master = p11.find_one(session, ceremony.master_label(KeySlot.IRK, Algorithm.DES3, 1))
            sh, mh = session.handle, master.handle
            start = time.perf_counter()
            for i in range(self.burst):
                factor = (self.done + i).to_bytes(8, "big")
                data = keyscheme.diversification_data(factor, Algorithm.DES3)
                self.ops.destroy(sh, self.ops.derive(sh, mh, Algorithm.DES3, data, self.template))
            self.seconds += time.perf_counter() - start
        self.done += self.burst

    @property
    def rate(self) -> float:
        return self.done / self.seconds


def _prepare(config: HsmConfig, count: int, offset: int, out: str) -> dict[str, float]:
    service = Pkcs11KeyService(p11.open_token(config))
    service.public_key_pem()  # open the session before timing
    raw = _InterleavedRaw(config, RAW_BURST)
    samples: dict[int, int] = {}
    paused = 0.0

    def progress(n: int) -> None:
        nonlocal paused
        if n % RSS_EVERY == 0 or n == count:
            samples[n] = _rss_kb()
        if n % RAW_EVERY == 0 or n == 1:
            t0 = time.perf_counter()
            raw.run()
            paused += time.perf_counter() - t0

    start = time.perf_counter()
    info = write_bureau_file(
        Path(out), sample_cards(count, offset), service, TRANSPORT, progress=progress
    )
    elapsed = time.perf_counter() - start - paused
    # bounded memory: the peak of the second half of the run against the first half's
    half = count // 2
    first = max(v for n, v in samples.items() if n <= half)
    second = max(v for n, v in samples.items() if n > half)
    return {
        "cards": info.count,
        "seconds": elapsed,
        "raw_per_s": raw.rate,
        "bytes": Path(out).stat().st_size,
        "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "rss_growth_kb_per_1000": (second - first) * 1000 / max(1, count - half),
    }


def _pool(procs: int, target: Any, args: list[tuple[Any, ...]]) -> tuple[list[Any], float]:
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(procs) as pool:
        start = time.perf_counter()
        results = pool.starmap(target, args)
        return results, time.perf_counter() - start


def _profile_one(config: HsmConfig, count: int, out: str) -> str:
    """cProfile of one process preparing ``count`` cards (top functions by own time)."""
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    _prepare(config, count, 5 * 10**8, out)
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(12)
    return buf.getvalue()


def main() -> dict[str, Any]:
    keys = sum(1 for _ in PROFILE.key_specs())
    with tempfile.TemporaryDirectory(prefix="ykt-bench-dataprep-") as tmp:
        root = Path(tmp)
        config = _config(root / "hsm")
        softhsm.ensure_token(config)
        _pool(1, _setup, [(config,)])
        (raw_alone,), _ = _pool(1, _raw, [(config, DURATION)])
        (one,), _ = _pool(1, _prepare, [(config, CARDS, 0, str(root / "one.jsonl"))])
        two, wall2 = _pool(
            2,
            _prepare,
            [(config, CARDS, (i + 1) * 10**8, str(root / f"two-{i}.jsonl")) for i in range(2)],
        )
        profile_text = ""
        if os.environ.get("YKT_BENCH_PROFILE"):
            (profile_text,), _ = _pool(1, _profile_one, [(config, 500, str(root / "p.jsonl"))])
    raw1 = one["raw_per_s"]
    raw2 = sum(r["raw_per_s"] for r in two)
    rate1 = one["cards"] / one["seconds"]
    rate2 = sum(r["cards"] / r["seconds"] for r in two)
    limit1, limit2 = raw1 / keys, raw2 / keys
    ratio1, ratio2 = rate1 / limit1, rate2 / limit2
    best = max(rate1, rate2)
    minutes = MILLION / best / 60
    peak_kb = max(one["peak_rss_kb"], *(r["peak_rss_kb"] for r in two))
    growth = max(one["rss_growth_kb_per_1000"], *(r["rss_growth_kb_per_1000"] for r in two))
    projected_kb = peak_kb + max(0.0, growth) * (MILLION - CARDS) / 1000
    bytes_per_card = one["bytes"] / one["cards"]
    figures = {
        "raw_derives_per_s_python_pkcs11": round(raw_alone),
        "raw_derives_per_s_1proc": round(raw1),
        "raw_derives_per_s_2proc": round(raw2),
        "keys_per_card": keys,
        "limit": round(limit1, 1),
        "limit_2proc": round(limit2, 1),
        "cards_per_s_1proc": round(rate1, 1),
        "cards_per_s_2proc": round(rate2, 1),
        "ratio": round(ratio1, 3),
        "ratio_2proc": round(ratio2, 3),
        "ratio_vs_python_pkcs11_raw": round(rate1 * keys / raw_alone, 3),
        "cards_measured_per_process": CARDS,
        "wall_seconds_2proc": round(wall2, 1),
        "projected_minutes_1m_cards": round(minutes, 1),
        "peak_rss_mib": round(peak_kb / 1024, 1),
        "rss_growth_kib_per_1000_cards": round(growth, 1),
        "projected_rss_mib_1m_cards": round(projected_kb / 1024, 1),
        "bureau_file_bytes_per_card": round(bytes_per_card),
    }

    def verdict(ok: bool) -> str:
        return "ok" if ok else "MISSED"

    print(
        f"raw HSM derive+destroy   : {raw1:8.0f} /s (1 process)  {raw2:8.0f} /s (2 processes), "
        f"direct calls between cards; python-pkcs11 alone: {raw_alone:.0f} /s "
        "(bench.hsm_derive._raw, reference only)"
    )
    print(f"keys per card (profile)  : {keys}  ({PROFILE.name}, KMC included)")
    print(f"limit = raw / keys       : {limit1:8.1f} cards/s (1 process)  {limit2:8.1f} (2)")
    print(
        f"data prep, 1 process     : {rate1:8.1f} cards/s  ratio {ratio1:.3f} of the limit "
        f"(target >= 0.70: {verdict(ratio1 >= 0.7)})"
    )
    print(
        f"data prep, 2 processes   : {rate2:8.1f} cards/s  ratio {ratio2:.3f} of the 2-process "
        f"limit (target >= 0.70: {verdict(ratio2 >= 0.7)})"
    )
    print(
        f"  (reference only: vs python-pkcs11's derive rate the 1-process ratio would read "
        f"{rate1 * keys / raw_alone:.2f}; the limit above is the HSM's own, 2-3x stricter)"
    )
    print(
        f"1,000,000 cards          : {minutes:8.1f} min EXTRAPOLATED from {CARDS} cards per "
        f"process at the best rate (target <= 15 min: {verdict(minutes <= 15)}; at ratio 1.0 "
        f"this machine's 2-process limit would give {MILLION / limit2 / 60:.1f} min)"
    )
    print(
        f"peak RSS while streaming : {peak_kb / 1024:8.1f} MiB measured, growth of the peak "
        f"(2nd half of the run vs 1st) {growth:.1f} KiB/1000 cards -> "
        f"{projected_kb / 1024:.1f} MiB EXTRAPOLATED to "
        f"1,000,000 cards (target < 1024 MiB: {verdict(projected_kb < 1024 * 1024)})"
    )
    print(f"bureau file size         : {bytes_per_card:8.0f} bytes/card "
          f"(~{bytes_per_card * MILLION / 2**30:.1f} GiB per 1,000,000 cards)")  # fmt: skip
    if profile_text:
        print(profile_text)
    # the product's own path from the database (issue 7 asks for this one): bench.dataprep_product
    from bench import dataprep_product

    figures.update(dataprep_product.main())
    return figures


if __name__ == "__main__":
    os.environ.pop("SOFTHSM2_CONF", None)
    main()
