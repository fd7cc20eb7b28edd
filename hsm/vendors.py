"""Per-vendor PKCS#11 mechanism tables for the national algorithms (SM4, SM2, SM3).

PKCS#11 v2.40 defines no SM mechanism; HSMs sold in China expose SM4, SM2 and SM3 under
*vendor-defined* numbers (``CKM_VENDOR_DEFINED`` = ``0x80000000`` plus an offset) that differ
from vendor to vendor. The table used is chosen by the ``[hsm] vendor`` setting; 3DES and AES
always use the standard v2.40 numbers (SoftHSM2 and every HSM).

Sources of the tables (public vendor headers, transcribed; check them against the vendor's own
header before production):

* ``ibm``: the "for IBM" block of a public ``swpkcs11.h`` (IBM's SM extensions):
  ``CKK_IBM_SM4 0x80050001``, ``CKK_IBM_SM2 0x80050002``, ``CKM_IBM_SM4_KEY_GEN 0x80050001``,
  ``CKM_IBM_SM4_ECB 0x80050004``, ``CKM_IBM_SM4_CBC 0x80050002``,
  ``CKM_IBM_SM4_ECB_ENCRYPT_DATA 0x80050009``, ``CKM_IBM_SM2_KEY_PAIR_GEN 0x8005000A``,
  ``CKM_IBM_SM2_SM3 0x8005000C``, ``CKM_IBM_SM3 0x8005000E``. It has the derivation mechanism
  the card keys need (SM4 ECB-encrypt-data, the SM4 analogue of ``CKM_AES_ECB_ENCRYPT_DATA``).
* ``swxa``: the default block of the same header (``CKM_VENDOR_DEFINED +``): SM4 key type
  ``0x106``, ``CKM_SM4_KEY_GEN 0x107``, ``CKM_SM4_ECB 0x108``, ``CKM_SM4_CBC 0x109``,
  ``CKK_SM2 4``, ``CKM_SM2_KEY_PAIR_GEN 0x8001``, ``CKM_SM3_SM2_APPID1 0x8102`` (SM2 with SM3
  and the identity ``1234567812345678``), ``CKM_SM3_HASH 0x9001``. It names no key derivation:
  card keys cannot be diversified inside such a module through PKCS#11
  (:class:`MechanismUnavailable` says so rather than deriving anywhere else).

What "SM2 with SM3" computes (GB/T 32918.2 / GM/T 0009): ``e = SM3(Z_A || M)`` with
``Z_A = SM3(ENTL || ID || a || b || x_G || y_G || x_A || y_A)``, the signature ``r || s``
(2 x 32 bytes). The user identity is the mechanism parameter; without one the default
``1234567812345678`` (GM/T 0009-2012 10.3) applies.

For tests and the demo the project builds ``var/lib/libykt-smp11.so`` (:mod:`hsm.smtoken`),
which offers exactly the mechanisms of the table it is configured with.
"""

from __future__ import annotations

from dataclasses import dataclass

from hsm.errors import HsmError, MechanismUnavailable

VENDOR = 0x80000000
#: The SM2 user identity GM/T 0009-2012 sets as the default (``ENTL`` = 128 bits).
DEFAULT_SM2_ID = b"1234567812345678"


@dataclass(frozen=True)
class SmMechanisms:
    """One vendor's numbers (``None``: the vendor offers no such mechanism)."""

    name: str
    key_sm4: int
    key_sm2: int
    sm4_keygen: int
    sm4_ecb: int
    sm4_cbc: int
    sm4_ecb_encrypt_data: int | None
    sm2_keygen: int
    sm2_sm3_sign: int
    sm3: int

    def require(self, field: str) -> int:
        value = getattr(self, field)
        if value is None:
            raise MechanismUnavailable(
                f"HSM vendor table {self.name!r} names no {field} mechanism: SM4 card keys "
                "cannot be derived inside this HSM through PKCS#11",
                ckr="CKR_MECHANISM_INVALID",
            )
        return int(value)

    def module_conf(self) -> dict[str, int]:
        """The ``keytype.*``/``mech.*`` lines of the test module's configuration."""
        out = {"keytype.sm4": self.key_sm4, "keytype.sm2": self.key_sm2}
        for field in (
            "sm4_keygen", "sm4_ecb", "sm4_cbc", "sm4_ecb_encrypt_data",
            "sm2_keygen", "sm2_sm3_sign", "sm3",
        ):  # fmt: skip
            value = getattr(self, field)
            if value is not None:
                out[f"mech.{field}"] = value
        return out


TABLES: dict[str, SmMechanisms] = {
    "ibm": SmMechanisms(
        name="ibm",
        key_sm4=0x80050001,
        key_sm2=0x80050002,
        sm4_keygen=0x80050001,
        sm4_ecb=0x80050004,
        sm4_cbc=0x80050002,
        sm4_ecb_encrypt_data=0x80050009,
        sm2_keygen=0x8005000A,
        sm2_sm3_sign=0x8005000C,
        sm3=0x8005000E,
    ),
    "swxa": SmMechanisms(
        name="swxa",
        key_sm4=VENDOR + 0x106,
        key_sm2=VENDOR + 4,
        sm4_keygen=VENDOR + 0x107,
        sm4_ecb=VENDOR + 0x108,
        sm4_cbc=VENDOR + 0x109,
        sm4_ecb_encrypt_data=None,
        sm2_keygen=VENDOR + 0x8001,
        sm2_sm3_sign=VENDOR + 0x8102,
        sm3=VENDOR + 0x9001,
    ),
}

#: ``[hsm] vendor`` value meaning "standard PKCS#11 v2.40 only" (SoftHSM2): no SM algorithm.
STANDARD = "standard"


def table(vendor: str) -> SmMechanisms | None:
    """The SM table of ``vendor`` (None for :data:`STANDARD`)."""
    if vendor == STANDARD:
        return None
    try:
        return TABLES[vendor]
    except KeyError:
        names = ", ".join([STANDARD, *TABLES])
        raise HsmError(f"unknown HSM vendor table {vendor!r} (known: {names})") from None
