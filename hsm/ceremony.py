"""Key ceremonies: issuer master keys, transport keys and the signing key, inside the HSM.

Design notes: ``docs/design/hsm.md`` (section ``hsm.ceremony``).
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import pkcs11.exceptions as p11x
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass

from cardspec import keyscheme
from cardspec.keyscheme import Algorithm, KeySlot
from hsm import pkcs11 as p11
from hsm.errors import HsmError, KcvMismatch, KeyDomainError, KeyExists, KeyNotFound
from hsm.pkcs11 import Pkcs11Token

SIGNING_LABEL = "ykt:signing:v1"
#: The issuer's SM2 key pair (card certificates, and feed / checkpoint signatures by setting),
#: in an HSM with an SM mechanism table.
SM2_SIGNING_LABEL = "ykt:signing:sm2:v1"
KLK = "klk"
"""Name of the key-loading key master in labels (``ykt:klk:aes:v<n>``)."""
KCV_PREFIX = "ykt:kcv:"
_MASTER_RE = re.compile(r"^ykt:([a-z_]+):(3des|aes|sm4):v(\d+)$")
_SUPPLIER_RE = re.compile(
    r"^ykt:supplier:([a-z0-9][a-z0-9_-]{0,39}):(kmc|klk):(3des|aes|sm4):v(\d+)$"
)
#: The masters of a chip supplier's delivery key set (``ykt hsm import kmc|klk --supplier``).
SUPPLIER_KEYS = ("kmc", "klk")
#: A bank's issuer master key of each per-card EMV key (the bank's key domain).
BANK_KEYS = {KeySlot.FIN_AC: "imk-ac", KeySlot.FIN_SMI: "imk-smi", KeySlot.FIN_SMC: "imk-smc"}
_BANK_RE = re.compile(
    r"^ykt:bank:([a-z0-9][a-z0-9_-]{0,39}):(imk-ac|imk-smi|imk-smc):(3des|aes|sm4):v(\d+)$"
)
#: The card centre's own key slots (a key set): every slot but the bank's ``FIN_*``.
CENTRE_SLOTS = tuple(slot for slot in KeySlot if not slot.financial)


def master_label(slot: KeySlot, alg: Algorithm, version: int) -> str:
    """Label of the card centre's issuer master of ``slot``; a ``FIN_*`` slot has none (its
    keys come from a bank's domain, :func:`bank_label`)."""
    if slot.financial:
        raise KeyDomainError(
            f"{slot.value}: the EMV keys come from the bank's issuer master keys "
            "(ykt:bank:<bank>:...), never from a card-centre master", slot=slot.value,
        )  # fmt: skip
    return f"ykt:{slot.value}:{alg.value}:v{version}"


def bank_label(bank: str, slot: KeySlot, alg: Algorithm, version: int = 1) -> str:
    """Label of ``bank``'s issuer master key of the EMV key ``slot`` (``FIN_*`` only)."""
    name = BANK_KEYS.get(slot)
    if name is None:
        raise KeyDomainError(
            f"{slot.value} is a card-centre key: a bank's key domain holds only "
            f"{', '.join(s.value for s in BANK_KEYS)}", slot=slot.value,
        )  # fmt: skip
    label = f"ykt:bank:{bank}:{name}:{alg.value}:v{version}"
    if _BANK_RE.match(label) is None:
        raise HsmError(
            f"bank key domain {bank!r}: 1-40 lower-case letters, digits, '-' or '_'", bank=bank
        )
    return label


def card_master_label(
    slot: KeySlot, alg: Algorithm, version: int, bank: str | None, bank_version: int = 1
) -> str:
    """The one rule of which master a card key ``slot`` is derived from: the card centre's key
    set ``version``, or for ``FIN_*`` the issuer master of the card's bank (its domain and key
    version, ``CardKeyRef.bank``)."""
    if not slot.financial:
        return master_label(slot, alg, version)
    if bank is None:
        raise KeyDomainError(
            f"{slot.value}: the card has no bank (no account data from a bank): no EMV keys",
            slot=slot.value,
        )  # fmt: skip
    return bank_label(bank, slot, alg, bank_version)


def bank_key_set_labels(bank: str, alg: Algorithm, version: int = 1) -> list[str]:
    """Every issuer master label of ``bank``'s key set ``version`` of ``alg``."""
    return [bank_label(bank, slot, alg, version) for slot in BANK_KEYS]


def klk_label(version: int, alg: Algorithm = Algorithm.DES3) -> str:
    """Label of the key-loading key master of key set ``version`` of ``alg`` (AES for 3DES and
    AES sets, SM4 for SM4 sets: ``keyscheme.klk_algorithm``)."""
    return f"ykt:{KLK}:{keyscheme.klk_algorithm(alg).value}:v{version}"


def supplier_label(supplier: str, kind: str, alg: Algorithm, version: int = 1) -> str:
    """Label of a master of ``supplier``'s delivery key set for chips of ``alg``: ``kind``
    ``kmc`` (of the chips' algorithm) or ``klk`` (AES; SM4 for SM4 chips); see the module
    docstring."""
    if kind not in SUPPLIER_KEYS:
        raise HsmError(f"a supplier key set has {' and '.join(SUPPLIER_KEYS)}, not {kind!r}")
    key_alg = keyscheme.klk_algorithm(alg) if kind == KLK else alg
    label = f"ykt:supplier:{supplier}:{kind}:{key_alg.value}:v{version}"
    if _SUPPLIER_RE.match(label) is None:
        raise HsmError(
            f"supplier name {supplier!r}: 1-40 lower-case letters, digits, '-' or '_'",
            supplier=supplier,
        )
    return label


def transport_label(name: str) -> str:
    return name if name.startswith("ykt:transport:") else f"ykt:transport:{name}"


@dataclass(frozen=True)
class KeyInfo:
    """A key in the token as listed by :func:`list_keys`."""

    label: str
    kind: str  # "master", "klk" (key-loading key master), "supplier", "transport", "signing"
    algorithm: str
    slot: KeySlot | None
    version: int | None
    kcv: bytes
    sensitive: bool
    extractable: bool
    kcv_source: str = ""
    """Where the KCV comes from: ``hsm`` (computed in the HSM now), ``import record`` (the
    ``ykt:kcv:`` object written when the key was imported), ``CKA_CHECK_VALUE`` (the token's
    own, PKCS#11 v2.40: ECB of a zero block, which for DES keys is ``keyscheme.kcv``)."""


def _secret_template(label: str, *usage: Attribute) -> dict[Attribute, object]:
    return {
        Attribute.TOKEN: True,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
        Attribute.MODIFIABLE: False,
        Attribute.LABEL: label,
        Attribute.ID: label.encode(),
        **p11.capabilities(*usage),
    }


def _recorded_kcv(session: Any, label: str) -> bytes | None:
    # list(): one C_FindObjects operation per session at a time, finished before the next
    found = list(
        session.get_objects(
            {Attribute.CLASS: ObjectClass.DATA, Attribute.LABEL: KCV_PREFIX + label}
        )
    )
    return bytes(found[0][Attribute.VALUE]) if found else None


def _record_kcv(session: Any, label: str, kcv: bytes) -> None:
    """Keep the KCV of an imported key in the token (CKO_DATA ``ykt:kcv:<label>``)."""
    for old in list(
        session.get_objects(
            {Attribute.CLASS: ObjectClass.DATA, Attribute.LABEL: KCV_PREFIX + label}
        )
    ):
        old.destroy()
    session.create_object(
        {
            Attribute.CLASS: ObjectClass.DATA,
            Attribute.TOKEN: True,
            Attribute.PRIVATE: True,
            Attribute.MODIFIABLE: False,
            Attribute.LABEL: KCV_PREFIX + label,
            Attribute.APPLICATION: "yikatong",
            Attribute.VALUE: bytes(kcv),
        }
    )


def _check_value(obj: Any) -> bytes | None:
    try:
        value = bytes(obj[Attribute.CHECK_VALUE])
    except (p11x.AttributeTypeInvalid, p11x.AttributeSensitive, KeyError):
        return None
    return value[:3] if value else None


def _parse(label: str) -> tuple[str, KeySlot | None, int | None]:
    """(kind, slot, version) of a Yikatong secret-key label."""
    bm = _BANK_RE.match(label)
    if bm is not None:
        slot = next(s for s, name in BANK_KEYS.items() if name == bm.group(2))
        return "bank", slot, int(bm.group(4))
    sm = _SUPPLIER_RE.match(label)
    if sm is not None:
        return "supplier", KeySlot.KMC if sm.group(2) == "kmc" else None, int(sm.group(4))
    m = _MASTER_RE.match(label)
    if m is None:
        return "transport", None, None
    if m.group(1) == KLK:
        return "klk", None, int(m.group(3))
    try:
        return "master", KeySlot(m.group(1)), int(m.group(3))
    except ValueError:
        return "unknown", None, int(m.group(3))


def _info(obj: Any, label: str, alg: Algorithm, session: Any = None) -> KeyInfo:
    kind, slot, version = _parse(label)
    check, source = b"", ""
    if obj[Attribute.DERIVE]:
        # KCV in the HSM needs CKA_DERIVE (masters): see hsm.pkcs11.kcv
        check, source = p11.kcv(obj, alg), "hsm"
    else:
        recorded = _recorded_kcv(session, label) if session is not None else None
        if recorded is not None:
            check, source = recorded, "import record"
        elif (value := _check_value(obj)) is not None:
            check, source = value, "CKA_CHECK_VALUE"
    return KeyInfo(
        label=label,
        kind=kind,
        algorithm=alg.value,
        slot=slot,
        version=version,
        kcv=check,
        sensitive=bool(obj[Attribute.SENSITIVE]),
        extractable=bool(obj[Attribute.EXTRACTABLE]),
        kcv_source=source,
    )


def _versions(session: Any, name: str, alg: Algorithm) -> list[int]:
    """Versions of the master ``name`` (a slot value or ``klk``) for ``alg`` in the token."""
    found = []
    for obj in session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY}):
        m = _MASTER_RE.match(obj.label or "")
        if m and m.group(1) == name and m.group(2) == alg.value:
            found.append(int(m.group(3)))
    return sorted(found)


def _labels(session: Any) -> set[str]:
    return {
        obj.label or "" for obj in session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY})
    }


def key_set_labels(alg: Algorithm, version: int) -> list[str]:
    """Every master label a complete key set ``version`` of ``alg`` has (the card centre's:
    the banks' keys are in their own domains)."""
    return [*(master_label(slot, alg, version) for slot in CENTRE_SLOTS), klk_label(version, alg)]


def _set_versions(labels: set[str], alg: Algorithm) -> tuple[list[int], list[int]]:
    """(every version with at least one card-key master of ``alg``, the complete ones)."""
    versions = set()
    for label in labels:
        m = _MASTER_RE.match(label)
        if m and m.group(2) == alg.value and m.group(1) != KLK:
            versions.add(int(m.group(3)))
    complete = [v for v in sorted(versions) if labels.issuperset(key_set_labels(alg, v))]
    return sorted(versions), complete


def complete_versions(token: Pkcs11Token, alg: Algorithm) -> list[int]:
    """Versions of ``alg`` whose key set is complete (see the module docstring), ascending."""
    with token.use("listing key sets") as session:
        return _set_versions(_labels(session), alg)[1]


def current_version(token: Pkcs11Token, alg: Algorithm) -> int | None:
    """The newest complete key set version of ``alg`` (what data preparation uses)."""
    complete = complete_versions(token, alg)
    return complete[-1] if complete else None


def latest_version(token: Pkcs11Token, slot: KeySlot, alg: Algorithm) -> int | None:
    with token.use("listing key versions") as session:
        versions = _versions(session, slot.value, alg)
    return versions[-1] if versions else None


def _generate_secret(token: Pkcs11Token, label: str, alg: Algorithm) -> KeyInfo:
    p11.check_algorithm(alg, token.config)
    with token.use(f"generating {label}") as session:
        if p11.exists(session, label):
            raise KeyExists(f"{label} already exists", label=label)
        template = _secret_template(label, Attribute.DERIVE)
        if alg is Algorithm.SM4:  # the vendor's numbers (hsm.vendors); no default capabilities
            key = session.generate_key(
                p11.KEY_TYPES[alg], 128, mechanism=p11.KEYGEN[alg], template=template,
                capabilities=MechanismFlag(0),
            )  # fmt: skip
        elif alg is Algorithm.DES3:
            key = session.generate_key(
                KeyType.DES2, 128, mechanism=Mechanism.DES2_KEY_GEN, template=template
            )
        else:
            key = session.generate_key(KeyType.AES, 128, template=template)
        return _info(key, label, alg, session)


def generate_master(
    token: Pkcs11Token, slot: KeySlot, alg: Algorithm = Algorithm.DES3, version: int = 1
) -> KeyInfo:
    """Generate an issuer master key inside the HSM."""
    return _generate_secret(token, master_label(slot, alg, version), alg)


def generate_klk_master(
    token: Pkcs11Token, version: int = 1, alg: Algorithm = Algorithm.DES3
) -> KeyInfo:
    """Generate the key-loading key master of key set ``version`` of ``alg`` (AES-128; SM4 for
    SM4 sets) inside the HSM."""
    return _generate_secret(token, klk_label(version, alg), keyscheme.klk_algorithm(alg))


def rotate_key_set(token: Pkcs11Token, alg: Algorithm = Algorithm.DES3) -> list[KeyInfo]:
    """Create key set version n+1 of ``alg`` (n = the highest version of any card-key master
    of ``alg``): every :class:`KeySlot` master and, unless the other algorithm's set of the same
    version made it already, the KLK master. Older versions stay usable for the cards
    personalised under them; data preparation moves to the new version (now the newest
    complete one). Returns the keys created."""
    p11.check_algorithm(alg, token.config)
    with token.use("listing key sets") as session:
        versions, _ = _set_versions(_labels(session), alg)
        klk_exists = p11.exists(session, klk_label((versions[-1] if versions else 0) + 1, alg))
    version = (versions[-1] if versions else 0) + 1
    created = [generate_master(token, slot, alg, version) for slot in CENTRE_SLOTS]
    if not klk_exists:
        created.append(generate_klk_master(token, version, alg))
    return created


def _combine(components: Sequence[bytes], kcvs: Sequence[bytes], alg: Algorithm) -> bytearray:
    if not 2 <= len(components) <= 3:
        raise HsmError("a key is imported from 2 or 3 components")
    if len(kcvs) != len(components):
        raise HsmError("one KCV per component")
    combined = bytearray(16)
    for n, (comp, check) in enumerate(zip(components, kcvs, strict=True), start=1):
        if len(comp) != 16:
            raise HsmError(f"component {n} must be 16 bytes", component=n)
        actual = keyscheme.kcv(bytes(comp), alg)
        if not hmac.compare_digest(actual, bytes(check)):
            raise KcvMismatch(f"component {n} does not match its KCV", component=n)
        for i, b in enumerate(comp):
            combined[i] ^= b
    return combined


def _import_secret(
    token: Pkcs11Token,
    label: str,
    alg: Algorithm,
    components: Sequence[bytes],
    kcvs: Sequence[bytes],
    expected_kcv: bytes | None,
    usage: tuple[Attribute, ...],
) -> KeyInfo:
    p11.check_algorithm(alg, token.config)
    combined = _combine(components, kcvs, alg)
    try:
        with token.use(f"importing {label}") as session:
            if p11.exists(session, label):
                raise KeyExists(f"{label} already exists", label=label)
            template = _secret_template(label, *usage)
            template[Attribute.CLASS] = ObjectClass.SECRET_KEY
            template[Attribute.KEY_TYPE] = p11.KEY_TYPES[alg]
            template[Attribute.VALUE] = bytes(combined)
            key = session.create_object(template)
            info = _info(key, label, alg)
            if info.kcv_source != "hsm":  # no CKA_DERIVE: KCV of the combined value, here
                info = replace(
                    info, kcv=keyscheme.kcv(bytes(combined), alg), kcv_source="import record"
                )
            if expected_kcv is not None and not hmac.compare_digest(info.kcv, expected_kcv):
                key.destroy()
                raise KcvMismatch(f"{label}: combined key does not match the expected KCV")
            _record_kcv(session, label, info.kcv)
            return info
    finally:
        combined[:] = bytes(len(combined))


def import_master(
    token: Pkcs11Token,
    slot: KeySlot,
    components: Sequence[bytes],
    kcvs: Sequence[bytes],
    alg: Algorithm = Algorithm.DES3,
    version: int = 1,
    expected_kcv: bytes | None = None,
) -> KeyInfo:
    """Import an issuer master key from 2-3 clear components, each checked by its KCV."""
    return _import_secret(
        token,
        master_label(slot, alg, version),
        alg,
        components,
        kcvs,
        expected_kcv,
        (Attribute.DERIVE,),
    )


def import_klk_master(
    token: Pkcs11Token,
    components: Sequence[bytes],
    kcvs: Sequence[bytes],
    version: int = 1,
    expected_kcv: bytes | None = None,
    alg: Algorithm = Algorithm.DES3,
) -> KeyInfo:
    """Import the key-loading key master of key set ``version`` of ``alg`` (AES-128; SM4 for
    SM4 sets) from components."""
    return _import_secret(
        token, klk_label(version, alg), keyscheme.klk_algorithm(alg), components, kcvs,
        expected_kcv, (Attribute.DERIVE,),
    )  # fmt: skip


def import_supplier_master(
    token: Pkcs11Token,
    supplier: str,
    kind: str,
    components: Sequence[bytes],
    kcvs: Sequence[bytes],
    alg: Algorithm = Algorithm.DES3,
    version: int = 1,
    expected_kcv: bytes | None = None,
) -> KeyInfo:
    """Import a master of ``supplier``'s delivery key set (``kind`` ``kmc`` or ``klk``) from
    the 2-3 components of the ceremony with the chip manufacturer (see the module docstring)."""
    label = supplier_label(supplier, kind, alg, version)
    key_alg = keyscheme.klk_algorithm(alg) if kind == KLK else alg
    return _import_secret(
        token, label, key_alg, components, kcvs, expected_kcv, (Attribute.DERIVE,)
    )


def import_bank_master(
    token: Pkcs11Token,
    bank: str,
    slot: KeySlot,
    components: Sequence[bytes],
    kcvs: Sequence[bytes],
    alg: Algorithm = Algorithm.DES3,
    version: int = 1,
    expected_kcv: bytes | None = None,
) -> KeyInfo:
    """Import ``bank``'s issuer master key of the EMV key ``slot`` (IMK-AC, IMK-SMI, IMK-SMC)
    from the 2-3 components its custodians bring, each checked by its KCV, into the bank's key
    domain (see the module docstring)."""
    return _import_secret(
        token, bank_label(bank, slot, alg, version), alg, components, kcvs, expected_kcv,
        (Attribute.DERIVE,),
    )  # fmt: skip


def bank_versions(token: Pkcs11Token, bank: str, alg: Algorithm) -> list[int]:
    """Versions of ``bank``'s key set of ``alg`` whose three issuer masters are all present."""
    with token.use("listing a bank's keys") as session:
        labels = _labels(session)
    found = set()
    for label in labels:
        m = _BANK_RE.match(label)
        if m and m.group(1) == bank and m.group(3) == alg.value:
            found.add(int(m.group(4)))
    return [v for v in sorted(found) if labels.issuperset(bank_key_set_labels(bank, alg, v))]


#: Algorithms a transport key may have: AES (keys of 3DES and AES cards), SM4 (SM4 cards).
TRANSPORT_ALGORITHMS = (Algorithm.AES, Algorithm.SM4)


def import_transport_key(
    token: Pkcs11Token,
    name: str,
    components: Sequence[bytes],
    kcvs: Sequence[bytes],
    expected_kcv: bytes | None = None,
    alg: Algorithm = Algorithm.AES,
) -> KeyInfo:
    """Import the transport key agreed with a card bureau or a chip maker (components +
    KCVs): AES-128, or SM4 for the keys of SM4 cards."""
    if alg not in TRANSPORT_ALGORITHMS:
        raise HsmError(f"a transport key is aes or sm4, not {alg.value}")
    return _import_secret(
        token,
        transport_label(name),
        alg,
        components,
        kcvs,
        expected_kcv,
        (Attribute.WRAP,),
    )


def generate_transport_key(
    token: Pkcs11Token, name: str, components: int = 2, alg: Algorithm = Algorithm.AES
) -> tuple[KeyInfo, list[tuple[bytes, bytes]]]:
    """A new transport key (AES, or SM4) for a bureau or a chip maker, as ``components``
    random components (HSM's RNG) with their KCVs, to hand to the custodians who carry them
    there; the combined key goes into the HSM. Returns the key's info and
    ``[(component, kcv), ...]``."""
    with token.use("random components") as session:
        parts = [bytes(session.generate_random(128)) for _ in range(components)]
    checks = [keyscheme.kcv(p, alg) for p in parts]
    info = import_transport_key(token, name, parts, checks, alg=alg)
    return info, list(zip(parts, checks, strict=True))


def _transport_algorithm(obj: Any) -> Algorithm:
    """A transport key's algorithm, from its key type (AES unless the SM table's SM4)."""
    sm4 = p11.KEY_TYPES.get(Algorithm.SM4)
    if sm4 is not None and int(obj[Attribute.KEY_TYPE]) == int(sm4):
        return Algorithm.SM4
    return Algorithm.AES


def generate_signing_key(token: Pkcs11Token, label: str = SIGNING_LABEL) -> bool:
    """ECDSA P-256 key pair in the HSM; returns False if it already exists."""
    from pkcs11.util.ec import encode_named_curve_parameters

    with token.use("generating the signing key") as session:
        if p11.exists(session, label, ObjectClass.PRIVATE_KEY):
            return False
        params = session.create_domain_parameters(
            KeyType.EC,
            {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
            local=True,
        )
        params.generate_keypair(
            store=True,
            label=label,
            id=label.encode(),
            public_template={Attribute.VERIFY: True, Attribute.TOKEN: True},
            private_template={
                Attribute.SIGN: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.PRIVATE: True,
                Attribute.TOKEN: True,
                Attribute.DERIVE: False,
            },
        )
        return True


def generate_sm2_signing_key(token: Pkcs11Token, label: str = SM2_SIGNING_LABEL) -> bool:
    """SM2 key pair in the HSM (the vendor's SM2 mechanisms, :mod:`hsm.vendors`); returns
    False if it already exists."""
    p11.sm_table()
    with token.use("generating the SM2 signing key") as session:
        if p11.exists(session, label, ObjectClass.PRIVATE_KEY):
            return False
        session.generate_keypair(
            p11.SM2["key_type"], 256, mechanism=p11.SM2["keygen"], store=True, label=label,
            id=label.encode(), capabilities=MechanismFlag(0),
            public_template={Attribute.VERIFY: True, Attribute.TOKEN: True},
            private_template={
                Attribute.SIGN: True, Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False,
                Attribute.PRIVATE: True, Attribute.TOKEN: True, Attribute.DERIVE: False,
            },
        )  # fmt: skip
        return True


def list_keys(token: Pkcs11Token) -> list[KeyInfo]:
    """Every Yikatong secret key in the token with its KCV (computed in the HSM for masters,
    the import record for transport keys), and the signing key."""
    out: list[KeyInfo] = []
    with token.use("listing keys") as session:
        for obj in list(session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY})):
            label = obj.label or ""
            if not label.startswith("ykt:"):
                continue
            m = _MASTER_RE.match(label)
            sm = _SUPPLIER_RE.match(label)
            bm = _BANK_RE.match(label)
            alg = (Algorithm(m.group(2)) if m else Algorithm(sm.group(3)) if sm
                   else Algorithm(bm.group(3)) if bm else _transport_algorithm(obj))  # fmt: skip
            if alg is Algorithm.SM4 and alg not in p11.KEY_TYPES:
                continue  # an SM4 key in an HSM whose SM table is not configured
            out.append(_info(obj, label, alg, session))
        for obj in list(session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY})):
            label = obj.label or ""
            if label.startswith("ykt:"):
                out.append(
                    KeyInfo(
                        label=label,
                        kind="signing",
                        algorithm="sm2" if label == SM2_SIGNING_LABEL else "ecdsa-p256",
                        slot=None,
                        version=None,
                        kcv=b"",
                        sensitive=bool(obj[Attribute.SENSITIVE]),
                        extractable=bool(obj[Attribute.EXTRACTABLE]),
                    )
                )
    out.sort(
        key=lambda k: (k.kind, k.slot.value if k.slot else "", k.algorithm, k.version or 0, k.label)
    )
    return out


def init_keys(token: Pkcs11Token, alg: Algorithm = Algorithm.DES3) -> list[str]:
    """Idempotent: generate every missing v1 master key of ``alg``, the KLK master of every key
    set version that has card-key masters (of any algorithm: older tokens made before the KLK
    existed get theirs here) and the signing key. Returns the labels created."""
    created: list[str] = []
    for slot in CENTRE_SLOTS:
        if latest_version(token, slot, alg) is None:
            created.append(generate_master(token, slot, alg, 1).label)
    with token.use("listing key sets") as session:
        labels = _labels(session)
    versions = set()
    for other in (Algorithm.DES3, Algorithm.AES):
        versions.update(_set_versions(labels, other)[0])
    for version in sorted(versions):
        if klk_label(version) not in labels:
            created.append(generate_klk_master(token, version).label)
    for version in _set_versions(labels, Algorithm.SM4)[0]:
        if klk_label(version, Algorithm.SM4) not in labels:
            created.append(generate_klk_master(token, version, Algorithm.SM4).label)
    if alg is Algorithm.SM4:  # an HSM with SM4 has SM2: the issuer's SM2 key (card certificates)
        if generate_sm2_signing_key(token):
            created.append(SM2_SIGNING_LABEL)
        return created
    if generate_signing_key(token):
        created.append(SIGNING_LABEL)
    return created


def require_master(token: Pkcs11Token, slot: KeySlot, alg: Algorithm, version: int) -> None:
    label = master_label(slot, alg, version)
    with token.use("looking up a key") as session:
        if not p11.exists(session, label):
            raise KeyNotFound(f"no master key {label}", label=label)
