"""The PKCS#11 adapter: one owner of the module per process.

Design notes: ``docs/design/hsm.md`` (section ``hsm.pkcs11``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pkcs11
import pkcs11.exceptions as p11x
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11.constants import DEFAULT

from cardspec import keyscheme
from cardspec.keyscheme import Algorithm
from hsm import p11fast, vendors
from hsm.config import HsmConfig
from hsm.errors import (
    HsmError,
    HsmUnavailable,
    KeyNotFound,
    MechanismUnavailable,
    ckr_name,
)
from hsm.vendors import SmMechanisms

#: The process-wide lock around every PKCS#11 call.
LOCK = threading.RLock()


@dataclass
class _Loaded:
    lib: Any
    pid: int
    conf: str | None


_MODULES: dict[str, _Loaded] = {}
_TOKENS: dict[tuple[str, str, str | None], Pkcs11Token] = {}
_generation = 0


def _bump() -> None:
    global _generation
    _generation += 1


@contextlib.contextmanager
def translate_errors(what: str) -> Iterator[None]:
    """Turn python-pkcs11 exceptions into :class:`HsmError` keeping the CKR_* name."""
    try:
        yield
    except HsmError:
        raise
    except (p11x.MechanismInvalid, p11x.FunctionNotSupported) as exc:
        raise MechanismUnavailable(
            f"{what}: mechanism not offered by the HSM", ckr=ckr_name(exc)
        ) from exc
    except (p11x.NoSuchToken, p11x.TokenNotPresent, p11x.PinIncorrect, p11x.PinLocked) as exc:
        raise HsmUnavailable(f"{what}: token unavailable", ckr=ckr_name(exc)) from exc
    except p11x.NoSuchKey as exc:
        raise KeyNotFound(f"{what}: no such key", ckr=ckr_name(exc)) from exc
    except p11x.PKCS11Error as exc:
        raise HsmError(f"{what} failed", ckr=ckr_name(exc)) from exc


def _conf_for(config: HsmConfig) -> str | None:
    if config.is_softhsm and config.softhsm_conf is not None:
        return str(config.softhsm_conf)
    if config.sm_conf is not None:
        return str(config.sm_conf)
    return None


def _set_conf_env(config: HsmConfig, conf: str) -> None:
    """Point the module at its configuration before it is (re-)initialised: SoftHSM2 reads
    ``SOFTHSM2_CONF``, the SM test module (:mod:`hsm.smtoken`) ``YKT_SMP11_CONF``."""
    os.environ["SOFTHSM2_CONF" if config.is_softhsm else "YKT_SMP11_CONF"] = conf


def _module(config: HsmConfig) -> Any:
    """The loaded and initialised module for this process (caller holds LOCK)."""
    path = str(config.module)
    conf = _conf_for(config)
    pid = os.getpid()
    loaded = _MODULES.get(path)
    if loaded is None:
        if conf is not None:
            _set_conf_env(config, conf)
        try:
            lib = pkcs11.lib(path)
        except p11x.PKCS11Error as exc:
            raise HsmUnavailable(
                f"cannot load PKCS#11 module {path}: {exc}", ckr=ckr_name(exc)
            ) from exc
        _MODULES[path] = _Loaded(lib, pid, conf)
        _bump()
        return lib
    if loaded.pid != pid or (conf is not None and loaded.conf != conf):
        if conf is not None:
            _set_conf_env(config, conf)
        with translate_errors("re-initialising the PKCS#11 module"):
            with contextlib.suppress(p11x.PKCS11Error):
                loaded.lib.finalize()
            loaded.lib.initialize()
        loaded.pid, loaded.conf = pid, conf if conf is not None else loaded.conf
        _bump()
    return loaded.lib


class Pkcs11Token:
    """One token, one logged-in session per process. Use :meth:`session` inside ``with LOCK``
    or, simpler, ``with token.use() as session:``."""

    def __init__(self, config: HsmConfig) -> None:
        self.config = config
        self._session: Any = None
        self._session_generation = -1
        self.manufacturer_id = ""

    @property
    def generation(self) -> int:
        """Changes whenever the module was (re-)initialised: cached object handles are stale."""
        with LOCK:
            _module(self.config)
            return _generation

    def session(self) -> Any:
        lib = _module(self.config)
        if self._session is None or self._session_generation != _generation:
            with translate_errors(f"opening token {self.config.token_label!r}"):
                token, session = _open_logged_in(lib, self.config)
                self.manufacturer_id = token.manufacturer_id
            self._session = session
            self._session_generation = _generation
        return self._session

    def reinitialise(self) -> None:
        """C_Finalize + C_Initialize of the module in this process, then log in again on the
        next use. Every object handle of the process becomes stale (:attr:`generation`
        changes); SoftHSM2 frees the memory of destroyed session objects only here."""
        with LOCK:
            lib = _module(self.config)
            with translate_errors("re-initialising the PKCS#11 module"):
                with contextlib.suppress(p11x.PKCS11Error):
                    lib.finalize()
                lib.initialize()
            _bump()
            self._session = None

    @contextlib.contextmanager
    def use(self, what: str = "PKCS#11 call") -> Iterator[Any]:
        """The session, under the process lock, with errors translated."""
        with LOCK, translate_errors(what):
            yield self.session()

    @property
    def is_softhsm(self) -> bool:
        with LOCK:
            self.session()
        return "softhsm" in self.manufacturer_id.lower()


def _open_logged_in(lib: Any, config: HsmConfig, attempts: int = 40) -> tuple[Any, Any]:
    """C_GetTokenInfo (token by label) + C_OpenSession + C_Login (caller holds LOCK).

    SoftHSM2's file store is not safe against a concurrent rewrite: when another process
    rewrites the token's files at that moment (every login rewrites the token's flags), it
    answers CKR_GENERAL_ERROR, reads half-written flags (CKR_USER_PIN_NOT_INITIALIZED) or,
    if it was initialising, lists no token at all until the next C_Initialize. Seen with 2
    worker processes logging in together. So: retried with a short random backoff, the module
    re-initialised before each retry (about 2 s in all, after which a token that is really
    missing is reported), never after a wrong or locked PIN."""
    for attempt in range(1, attempts + 1):
        try:
            token = lib.get_token(token_label=config.token_label)
            try:
                return token, token.open(user_pin=config.user_pin(), rw=True)
            except p11x.UserAlreadyLoggedIn:
                return token, token.open(rw=True)
        except (p11x.PinIncorrect, p11x.PinLocked):
            raise  # never retried: each try would count as a wrong PIN
        except p11x.PKCS11Error:
            if attempt == attempts:
                raise
            time.sleep(random.uniform(0.001, 0.08))
            with contextlib.suppress(p11x.PKCS11Error):
                lib.finalize()
            lib.initialize()
            _bump()
    raise AssertionError("unreachable")


def open_token(config: HsmConfig) -> Pkcs11Token:
    """The process's :class:`Pkcs11Token` for this module, label and configuration."""
    key = (str(config.module), config.token_label, _conf_for(config))
    register_vendor(config.vendor)
    with LOCK:
        token = _TOKENS.get(key)
        if token is None:
            token = _TOKENS[key] = Pkcs11Token(config)
        return token


# --- Helpers on a session (call them with LOCK held, e.g. inside ``token.use()``) -------------

#: PKCS#11 key type of a card/master key per algorithm.
KEY_TYPES: dict[Algorithm, KeyType] = {Algorithm.DES3: KeyType.DES2, Algorithm.AES: KeyType.AES}
ECB: dict[Algorithm, Mechanism] = {
    Algorithm.DES3: Mechanism.DES3_ECB,
    Algorithm.AES: Mechanism.AES_ECB,
}
CBC: dict[Algorithm, Mechanism] = {
    Algorithm.DES3: Mechanism.DES3_CBC,
    Algorithm.AES: Mechanism.AES_CBC,
}
ENCRYPT_DATA: dict[Algorithm, Mechanism] = {
    Algorithm.DES3: Mechanism.DES3_ECB_ENCRYPT_DATA,
    Algorithm.AES: Mechanism.AES_ECB_ENCRYPT_DATA,
}
KEYGEN: dict[Algorithm, Mechanism] = {
    Algorithm.DES3: Mechanism.DES2_KEY_GEN,
    Algorithm.AES: Mechanism.AES_KEY_GEN,
}

_CAPABILITIES = (
    Attribute.ENCRYPT,
    Attribute.DECRYPT,
    Attribute.WRAP,
    Attribute.UNWRAP,
    Attribute.SIGN,
    Attribute.VERIFY,
    Attribute.DERIVE,
)


def capabilities(*allowed: Attribute) -> dict[Attribute, bool]:
    """A template granting exactly ``allowed`` among the usage attributes."""
    return {attr: attr in allowed for attr in _CAPABILITIES}


# --- Vendor-defined SM mechanisms (hsm.vendors) ------------------------------------------------
#: The SM mechanism table of this process (``[hsm] vendor``), once registered.
SM_TABLE: SmMechanisms | None = None
#: SM2/SM3 under the registered table's numbers: ``key_type``, ``keygen``, ``sign`` (SM2 with
#: SM3 and the user identity, ``r || s``), ``digest`` (SM3).
SM2: dict[str, Any] = {}


def _vendor_member(enum: Any, value: int, name: str) -> Any:
    """``enum(value)``, or a pseudo-member for a vendor-defined number: python-pkcs11 takes
    only its own IntEnums as key types and mechanisms, and has no member for vendor values."""
    try:
        return enum(value)
    except ValueError:
        member = int.__new__(enum, value)
        member._name_ = name
        member._value_ = value
        enum._value2member_map_[value] = member
        return member


def register_vendor(vendor: str) -> None:
    """Make the SM4 mechanisms of ``vendor``'s table (:mod:`hsm.vendors`) the ones every SM4
    operation of this process uses. One table per process (one HSM model)."""
    global SM_TABLE
    table = vendors.table(vendor)
    if table is None or table == SM_TABLE:
        return
    if SM_TABLE is not None:
        raise HsmError(f"HSM vendor table {SM_TABLE.name!r} already in use in this process")
    SM_TABLE = table
    KEY_TYPES[Algorithm.SM4] = _vendor_member(KeyType, table.key_sm4, "SM4_VENDOR")
    ECB[Algorithm.SM4] = _vendor_member(Mechanism, table.sm4_ecb, "SM4_ECB_VENDOR")
    CBC[Algorithm.SM4] = _vendor_member(Mechanism, table.sm4_cbc, "SM4_CBC_VENDOR")
    if table.sm4_ecb_encrypt_data is not None:
        ENCRYPT_DATA[Algorithm.SM4] = _vendor_member(
            Mechanism, table.sm4_ecb_encrypt_data, "SM4_ECB_ENCRYPT_DATA_VENDOR"
        )
    KEYGEN[Algorithm.SM4] = _vendor_member(Mechanism, table.sm4_keygen, "SM4_KEY_GEN_VENDOR")
    SM2["key_type"] = _vendor_member(KeyType, table.key_sm2, "SM2_VENDOR")
    SM2["keygen"] = _vendor_member(Mechanism, table.sm2_keygen, "SM2_KEY_PAIR_GEN_VENDOR")
    SM2["sign"] = _vendor_member(Mechanism, table.sm2_sm3_sign, "SM2_SM3_VENDOR")
    SM2["digest"] = _vendor_member(Mechanism, table.sm3, "SM3_VENDOR")
    p11fast.register_sm4(table.key_sm4, table.sm4_ecb, table.sm4_cbc, table.sm4_ecb_encrypt_data)


def sm_table() -> SmMechanisms:
    if SM_TABLE is None:
        raise MechanismUnavailable(
            'sm4/sm2: the configured HSM has no SM mechanism table ([hsm] vendor = "standard"; '
            "SoftHSM2 and PKCS#11 v2.40 have no SM mechanism)"
        )
    return SM_TABLE


def check_algorithm(alg: Algorithm, config: HsmConfig | None = None) -> None:
    """MechanismUnavailable unless ``alg`` can be used (on the token of ``config``: SM4 only
    with an SM mechanism table, whatever another token of the process registered)."""
    if config is not None and alg is Algorithm.SM4 and vendors.table(config.vendor) is None:
        alg_missing = True
    else:
        alg_missing = alg not in KEY_TYPES
    if alg_missing:
        raise MechanismUnavailable(
            f"{alg.value}: needs an HSM with this algorithm (SoftHSM2 and PKCS#11 v2.40 have no "
            "SM4 mechanism: set [hsm] vendor to an SM table, see hsm.vendors); use 3des or aes"
        )
    if alg is Algorithm.SM4 and alg not in ENCRYPT_DATA:
        sm_table().require("sm4_ecb_encrypt_data")


def derive(
    base: Any,
    alg: Algorithm,
    data: bytes,
    *,
    key_type: KeyType | None = None,
    length: int = 16,
    template: dict[Attribute, Any] | None = None,
) -> Any:
    """``C_DeriveKey(CKM_DES3_ECB_ENCRYPT_DATA | CKM_AES_ECB_ENCRYPT_DATA)``: a session key whose
    value is the ECB encryption of ``data`` under ``base``.

    For DES3 the parameter is a raw ``CK_KEY_DERIVATION_STRING_DATA`` passed as bytes
    (python-pkcs11 builds it only for AES); ``buf`` stays referenced until the call returns.
    CKA_VALUE_LEN is dropped for DES keys (SoftHSM refuses it there).
    """
    check_algorithm(alg)
    kt = key_type or KEY_TYPES[alg]
    buf = ctypes.create_string_buffer(data, len(data))
    # python-pkcs11 builds the struct itself for AES_ECB_ENCRYPT_DATA only
    param = data if alg is Algorithm.AES else struct.pack("PL", ctypes.addressof(buf), len(data))
    tmpl: dict[Attribute, Any] = {Attribute.TOKEN: False, Attribute.PRIVATE: True}
    if kt in (KeyType.DES2, KeyType.DES3):
        tmpl[Attribute.VALUE_LEN] = DEFAULT
    tmpl.update(template or {})
    # vendor key types have no python-pkcs11 default capabilities: the template sets them all
    caps = MechanismFlag(0) if alg is Algorithm.SM4 else None
    key = base.derive_key(
        kt, length * 8, mechanism=ENCRYPT_DATA[alg], mechanism_param=param, template=tmpl,
        capabilities=caps,
    )  # fmt: skip
    del buf
    return key


def kcv(key: Any, alg: Algorithm) -> bytes:
    """Key check value computed in the HSM (``keyscheme.kcv``): 3DES ``ECB(K, 0^8)[:3]``, AES
    ``ECB(K, 01^16)[:3]``, SM4 ``ECB(K, 0^16)[:3]``, through a 3-byte non-sensitive derived
    value, so the key itself needs no CKA_ENCRYPT (a master key with CKA_ENCRYPT would let
    C_Encrypt compute card keys in clear)."""
    data = keyscheme.kcv_block(alg)
    check = derive(
        key,
        alg,
        data,
        key_type=KeyType.GENERIC_SECRET,
        length=3,
        template={Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True, **capabilities()},
    )
    try:
        return bytes(check[Attribute.VALUE])
    finally:
        check.destroy()


def find_one(session: Any, label: str, object_class: ObjectClass = ObjectClass.SECRET_KEY) -> Any:
    objs = list(session.get_objects({Attribute.LABEL: label, Attribute.CLASS: object_class}))
    if not objs:
        raise KeyNotFound(f"no key labelled {label!r} in the token", label=label)
    if len(objs) > 1:
        raise HsmError(f"{len(objs)} objects labelled {label!r}", label=label)
    return objs[0]


def exists(session: Any, label: str, object_class: ObjectClass = ObjectClass.SECRET_KEY) -> bool:
    return any(
        True for _ in session.get_objects({Attribute.LABEL: label, Attribute.CLASS: object_class})
    )
