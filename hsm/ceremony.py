"""Key ceremonies: issuer master keys, transport keys and the signing key, inside the HSM.

Labels (CKA_LABEL, also used as CKA_ID):

* ``ykt:<slot>:<alg>:v<n>``  issuer master key of a :class:`KeySlot` (e.g. ``ykt:irk:3des:v1``):
  DES2 (double-length 3DES) or AES-128; token object, private, sensitive, never extractable,
  CKA_DERIVE only (no CKA_ENCRYPT: C_Encrypt under a master would give card keys in clear).
* ``ykt:transport:<name>``     AES-128 transport key shared with a card bureau (CKA_WRAP).
* ``ykt:signing:v1``            ECDSA P-256 key pair (status feed, audit checkpoints).

Component import: SoftHSM2 has no CKM_XOR_BASE_AND_DATA, so the 2-3 components entered by the
custodians are checked against their KCVs and XORed in this process's memory (they are in clear
memory anyway, typed in by the custodians), the result is created in the HSM as a
non-extractable key and every buffer is overwritten. That short window is the only place an
issuer key exists outside the HSM; generated keys never leave it.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

from cardspec import keyscheme
from cardspec.keyscheme import Algorithm, KeySlot
from hsm import pkcs11 as p11
from hsm.errors import HsmError, KcvMismatch, KeyExists, KeyNotFound
from hsm.pkcs11 import Pkcs11Token

SIGNING_LABEL = "ykt:signing:v1"
_MASTER_RE = re.compile(r"^ykt:([a-z_]+):(3des|aes|sm4):v(\d+)$")


def master_label(slot: KeySlot, alg: Algorithm, version: int) -> str:
    return f"ykt:{slot.value}:{alg.value}:v{version}"


def transport_label(name: str) -> str:
    return name if name.startswith("ykt:transport:") else f"ykt:transport:{name}"


@dataclass(frozen=True)
class KeyInfo:
    """A key in the token as listed by :func:`list_keys`."""

    label: str
    kind: str  # "master", "transport", "signing"
    algorithm: str
    slot: KeySlot | None
    version: int | None
    kcv: bytes
    sensitive: bool
    extractable: bool


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


def _info(obj: object, label: str, alg: Algorithm) -> KeyInfo:
    kind, slot, version = "transport", None, None
    m = _MASTER_RE.match(label)
    if m:
        kind, slot, version = "master", KeySlot(m.group(1)), int(m.group(3))
    # KCV in the HSM needs CKA_DERIVE (masters); a transport key (CKA_WRAP only) has none here
    check = p11.kcv(obj, alg) if obj[Attribute.DERIVE] else b""  # type: ignore[index]
    return KeyInfo(
        label=label,
        kind=kind,
        algorithm=alg.value,
        slot=slot,
        version=version,
        kcv=check,
        sensitive=bool(obj[Attribute.SENSITIVE]),  # type: ignore[index]
        extractable=bool(obj[Attribute.EXTRACTABLE]),  # type: ignore[index]
    )


def _versions(session: object, slot: KeySlot, alg: Algorithm) -> list[int]:
    found = []
    for obj in session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY}):  # type: ignore[attr-defined]
        m = _MASTER_RE.match(obj.label or "")
        if m and m.group(1) == slot.value and m.group(2) == alg.value:
            found.append(int(m.group(3)))
    return sorted(found)


def latest_version(token: Pkcs11Token, slot: KeySlot, alg: Algorithm) -> int | None:
    with token.use("listing key versions") as session:
        versions = _versions(session, slot, alg)
    return versions[-1] if versions else None


def generate_master(
    token: Pkcs11Token, slot: KeySlot, alg: Algorithm = Algorithm.DES3, version: int = 1
) -> KeyInfo:
    """Generate an issuer master key inside the HSM."""
    p11.check_algorithm(alg)
    label = master_label(slot, alg, version)
    with token.use(f"generating {label}") as session:
        if p11.exists(session, label):
            raise KeyExists(f"{label} already exists", label=label)
        template = _secret_template(label, Attribute.DERIVE)
        if alg is Algorithm.DES3:
            key = session.generate_key(
                KeyType.DES2, 128, mechanism=Mechanism.DES2_KEY_GEN, template=template
            )
        else:
            key = session.generate_key(KeyType.AES, 128, template=template)
        return _info(key, label, alg)


def rotate(token: Pkcs11Token, slot: KeySlot, alg: Algorithm = Algorithm.DES3) -> KeyInfo:
    """Generate version n+1; older versions stay usable for cards personalised under them."""
    current = latest_version(token, slot, alg) or 0
    return generate_master(token, slot, alg, current + 1)


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
    p11.check_algorithm(alg)
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
            if not info.kcv:  # no CKA_DERIVE: KCV of the combined value, in this window
                info = replace(info, kcv=keyscheme.kcv(bytes(combined), alg))
            if expected_kcv is not None and not hmac.compare_digest(info.kcv, expected_kcv):
                key.destroy()
                raise KcvMismatch(f"{label}: combined key does not match the expected KCV")
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


def import_transport_key(
    token: Pkcs11Token,
    name: str,
    components: Sequence[bytes],
    kcvs: Sequence[bytes],
    expected_kcv: bytes | None = None,
) -> KeyInfo:
    """Import the AES-128 transport key agreed with a card bureau (components + KCVs)."""
    return _import_secret(
        token,
        transport_label(name),
        Algorithm.AES,
        components,
        kcvs,
        expected_kcv,
        (Attribute.WRAP,),
    )


def generate_transport_key(
    token: Pkcs11Token, name: str, components: int = 2
) -> tuple[KeyInfo, list[tuple[bytes, bytes]]]:
    """A new transport key for a bureau, as ``components`` random components (HSM's RNG) with
    their KCVs, to hand to the custodians who carry them to the bureau; the combined key goes
    into the HSM. Returns the key's info and ``[(component, kcv), ...]``."""
    with token.use("random components") as session:
        parts = [bytes(session.generate_random(128)) for _ in range(components)]
    checks = [keyscheme.kcv(p, Algorithm.AES) for p in parts]
    info = import_transport_key(token, name, parts, checks)
    return info, list(zip(parts, checks, strict=True))


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


def list_keys(token: Pkcs11Token) -> list[KeyInfo]:
    """Every Yikatong secret key in the token with its KCV (computed in the HSM), and the
    signing key."""
    out: list[KeyInfo] = []
    with token.use("listing keys") as session:
        for obj in session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY}):
            label = obj.label or ""
            if not label.startswith("ykt:"):
                continue
            m = _MASTER_RE.match(label)
            alg = Algorithm(m.group(2)) if m else Algorithm.AES
            if alg is Algorithm.SM4:
                continue
            out.append(_info(obj, label, alg))
        for obj in session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY}):
            label = obj.label or ""
            if label.startswith("ykt:"):
                out.append(
                    KeyInfo(
                        label=label,
                        kind="signing",
                        algorithm="ecdsa-p256",
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
    """Idempotent: generate every missing v1 master key and the signing key. Returns the
    labels created."""
    created: list[str] = []
    for slot in KeySlot:
        if latest_version(token, slot, alg) is None:
            created.append(generate_master(token, slot, alg, 1).label)
    if generate_signing_key(token):
        created.append(SIGNING_LABEL)
    return created


def require_master(token: Pkcs11Token, slot: KeySlot, alg: Algorithm, version: int) -> None:
    label = master_label(slot, alg, version)
    with token.use("looking up a key") as session:
        if not p11.exists(session, label):
            raise KeyNotFound(f"no master key {label}", label=label)
