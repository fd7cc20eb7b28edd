"""An SM4 third-generation card, personalised and checked through the SM test PKCS#11 module,
with its APDU transcript (tests and demo only: throwaway keys).

    .venv/bin/python scripts/sm4-card-transcript.py [--perso]

The token (``ibm`` vendor table, :mod:`hsm.vendors`) gets throwaway SM4 masters imported from
components: the emulated chip's manufacturer needs the chip's transport key KMC and key-loading
key KLK, which this script derives from the same throwaway masters in software (as the card
emulator's factory does). Every card key is then derived inside the module; the card checks
WRITE KEY payloads (SM4-ECB under its KLK + KCV) and INTERNAL AUTHENTICATE is checked in the
module; the chip generates its SM2 key pair, the issuer's SM2 key in the module certifies it, the
certificates are read back and the chip's SM2 signature is checked (``cardspec.sm2``).
``--perso`` also prints the personalisation commands.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cardspec import cardops, ids, keyscheme, perso, sm2, tlv  # noqa: E402
from cardspec.crypto import SoftwareCardCrypto  # noqa: E402
from cardspec.emulator import blank_card  # noqa: E402
from cardspec.keyscheme import Algorithm, KeySlot  # noqa: E402
from cardspec.profile import social_security_profile  # noqa: E402
from cardspec.profile.model import SOCIAL_SECURITY_DF_NAME  # noqa: E402
from cardspec.reader import InProcessReader  # noqa: E402
from hsm import ceremony, smtoken  # noqa: E402
from hsm import pkcs11 as p11  # noqa: E402
from hsm.config import HsmConfig  # noqa: E402
from hsm.internal_auth import check_chip_sm2  # noqa: E402
from hsm.service import CardKeyRef, Pkcs11KeyService  # noqa: E402

SM4 = Algorithm.SM4


class LoggingReader(InProcessReader):
    show = True

    def transmit(self, command: bytes) -> bytes:
        answer = super().transmit(command)
        if self.show:
            print(f">> {command.hex().upper()}")
            print(f"<< {answer.hex().upper()}")
        return answer


def throwaway(name: str) -> bytes:
    return hashlib.sha256(f"ykt-sm4-transcript:{name}".encode()).digest()[:16]


def _pin() -> str:
    return "1234"


def main() -> None:
    show_perso = "--perso" in sys.argv
    module = smtoken.build(ROOT / "var" / "lib")
    with tempfile.TemporaryDirectory(prefix="ykt-sm4-") as tmp:
        config = HsmConfig(module=module, token_label="ykt-sm4-demo", pin_source=_pin,
                           so_pin="12345678", vendor="ibm", sm_conf=Path(tmp) / "smp11.conf",
                           sm_store=Path(tmp) / "tokens")  # fmt: skip
        smtoken.ensure_token(config)
        token = p11.open_token(config)
        masters = {slot: throwaway(slot.value) for slot in KeySlot}
        for slot, key in masters.items():
            half = os.urandom(16)
            comps = [half, bytes(a ^ b for a, b in zip(half, key, strict=True))]
            ceremony.import_master(token, slot, comps, [keyscheme.kcv(c, SM4) for c in comps],
                                   SM4, 1, expected_kcv=keyscheme.kcv(key, SM4))  # fmt: skip
        klk_master = throwaway("klk")
        half = os.urandom(16)
        comps = [half, bytes(a ^ b for a, b in zip(half, klk_master, strict=True))]
        ceremony.import_klk_master(token, comps, [keyscheme.kcv(c, SM4) for c in comps], 1,
                                   alg=SM4)  # fmt: skip
        ceremony.init_keys(token, SM4)  # the issuer's SM2 key pair, made in the module
        service = Pkcs11KeyService(token)
        serial = os.urandom(8)
        cic = ids.make_card_identification_code("330182", serial)
        maker = SoftwareCardCrypto(masters, (keyscheme.card_factor(cic),), SM4,
                                   klk_master=klk_master)  # fmt: skip
        profile = social_security_profile(generation=3, algorithm=SM4, financial=False)
        card = blank_card(serial, maker.card_key(KeySlot.KMC), SM4,
                          klk=maker.key_loading_key(), profile=profile)  # fmt: skip
        reader = LoggingReader(card)
        reader.show = show_perso
        print(f"card identification code {cic}, profile {profile.name}")
        data = perso.sample_perso_data(cic, profile, card_number=ids.make_card_number("S0000001"))
        ref = CardKeyRef(cic, algorithm=SM4)
        with service.card_crypto(ref) as crypto:
            perso.personalise(reader, crypto, data, profile, certifier=service)
        reader.show = True
        reader.connect()
        print("-- SELECT the social security DF (FCI announces 9F0C 86 01 03: SM4)")
        fci = cardops.select_df(reader, profile, "SSSE", fci=True)
        marker = tlv.find(fci, 0x9F0C)
        assert marker is not None and tlv.find(marker, 0x86) == b"\x03"
        print(f"   DF name {SOCIAL_SECURITY_DF_NAME.decode('gbk', 'replace')}")
        print("-- INTERNAL AUTHENTICATE (factor || random), answer checked in the SM module")
        factor, random = os.urandom(8), os.urandom(8)
        answer = cardops.internal_authenticate(reader, factor, random)
        service.verify_internal_auth(ref, factor, random, answer)
        print("   genuine: the module's SM4 session key gives the same 16 bytes")
        print("-- the card certificate and the issuer certificate, read back (GET DATA DF20/DF21)")
        card_cert, issuer_cert = cardops.read_certificates(reader)
        issuer_public = service.sm2_public_key()
        sm2.check_certificate(issuer_cert, issuer_public)
        print("-- INTERNAL AUTHENTICATE with the chip's SM2 key (00 88 00 81) over the challenge")
        challenge = factor + random
        signature = cardops.sm2_internal_authenticate(reader, challenge)
        check_chip_sm2(service, ref, challenge, card_cert, signature)
        print("   card certificate signed by the issuer's SM2 key (in the module), issued to this")
        print("   card identification code; the chip's SM2/SM3 signature verifies under it")


if __name__ == "__main__":
    main()
