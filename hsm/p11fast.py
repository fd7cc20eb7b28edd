"""Direct PKCS#11 calls: the per-card path (card keys derived, used, wrapped, destroyed).

Design notes: ``docs/design/hsm.md`` (section ``hsm.p11fast``).
"""

from __future__ import annotations

import ctypes
from typing import Any

from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

from cardspec.keyscheme import Algorithm
from hsm.errors import HsmError, HsmUnavailable, KeyNotFound, MechanismUnavailable

_ULONG = ctypes.c_ulong
_CKR_BUFFER_TOO_SMALL = 0x150
_CKR_NAMES = {
    0x05: "CKR_GENERAL_ERROR",
    0x60: "CKR_KEY_HANDLE_INVALID",
    0x70: "CKR_MECHANISM_INVALID",
    0x71: "CKR_MECHANISM_PARAM_INVALID",
    0x82: "CKR_OBJECT_HANDLE_INVALID",
    0xB3: "CKR_SESSION_HANDLE_INVALID",
    0x113: "CKR_WRAPPING_KEY_HANDLE_INVALID",
    0x110: "CKR_WRAPPED_KEY_INVALID",
    0x112: "CKR_WRAPPED_KEY_LEN_RANGE",
    0x150: "CKR_BUFFER_TOO_SMALL",
    0x190: "CKR_CRYPTOKI_NOT_INITIALIZED",
}


class _Mechanism(ctypes.Structure):
    _fields_ = [("mechanism", _ULONG), ("pParameter", ctypes.c_void_p), ("ulParameterLen", _ULONG)]


class _Attribute(ctypes.Structure):
    _fields_ = [("type", _ULONG), ("pValue", ctypes.c_void_p), ("ulValueLen", _ULONG)]


class _DerivationData(ctypes.Structure):
    """CK_KEY_DERIVATION_STRING_DATA."""

    _fields_ = [("pData", ctypes.c_void_p), ("ulLen", _ULONG)]


class Template:
    """A CK_ATTRIBUTE array built once (the values stay referenced by the object)."""

    def __init__(self, attrs: dict[Attribute, bool | int]) -> None:
        self._values: list[Any] = []
        self.array = (_Attribute * len(attrs))()
        for i, (attr, value) in enumerate(attrs.items()):
            cvalue: Any = ctypes.c_ubyte(int(value)) if isinstance(value, bool) else _ULONG(value)
            self._values.append(cvalue)
            self.array[i].type = int(attr)
            self.array[i].pValue = ctypes.cast(ctypes.byref(cvalue), ctypes.c_void_p)
            self.array[i].ulValueLen = ctypes.sizeof(cvalue)
        self.count = len(attrs)
        #: the array's address (what the calls pass: :class:`FastOps`)
        self.address = ctypes.addressof(self.array)


_KEY_TYPE: dict[Algorithm, int] = {Algorithm.DES3: KeyType.DES2, Algorithm.AES: KeyType.AES}
_DERIVE = {
    Algorithm.DES3: Mechanism.DES3_ECB_ENCRYPT_DATA,
    Algorithm.AES: Mechanism.AES_ECB_ENCRYPT_DATA,
}
_DERIVE_CODE = {alg: int(mech) for alg, mech in _DERIVE.items()}
_ECB = {Algorithm.DES3: Mechanism.DES3_ECB, Algorithm.AES: Mechanism.AES_ECB}
_KWP_CODE = int(Mechanism.AES_KEY_WRAP_PAD)
_CBC = {Algorithm.DES3: Mechanism.DES3_CBC, Algorithm.AES: Mechanism.AES_CBC}
_ECB_CODE = {alg: int(mech) for alg, mech in _ECB.items()}
_CBC_CODE = {alg: int(mech) for alg, mech in _CBC.items()}


def register_sm4(key_type: int, ecb: int, cbc: int, derive: int | None) -> None:
    """SM4 under the vendor's numbers (``hsm.pkcs11.register_vendor``, one table a process)."""
    _KEY_TYPE[Algorithm.SM4] = key_type
    _ECB_CODE[Algorithm.SM4] = ecb
    _CBC_CODE[Algorithm.SM4] = cbc
    if derive is not None:
        _DERIVE_CODE[Algorithm.SM4] = derive


_USAGE = (
    Attribute.ENCRYPT,
    Attribute.DECRYPT,
    Attribute.WRAP,
    Attribute.UNWRAP,
    Attribute.SIGN,
    Attribute.VERIFY,
    Attribute.DERIVE,
)


def key_template(
    alg: Algorithm,
    *usage: Attribute,
    extractable: bool = True,
    minimal: bool = False,
    unwrap: bool = False,
) -> Template:
    """A derived session key: public session object (see ``hsm.service``), sensitive, with
    exactly ``usage``. ``minimal``: class and type only (the raw benchmark). ``unwrap``: for
    ``C_UnwrapKey`` (no CKA_VALUE_LEN: the length comes from the wrapped value, SoftHSM2
    answers CKR_ATTRIBUTE_READ_ONLY to it)."""
    attrs: dict[Attribute, bool | int] = {
        Attribute.CLASS: int(ObjectClass.SECRET_KEY),
        Attribute.KEY_TYPE: int(_KEY_TYPE[alg]),
    }
    if alg is Algorithm.AES and not unwrap:
        attrs[Attribute.VALUE_LEN] = 16  # SoftHSM refuses CKA_VALUE_LEN for DES keys
    if not minimal:
        attrs[Attribute.TOKEN] = False
        attrs[Attribute.PRIVATE] = False
        attrs[Attribute.SENSITIVE] = True
        attrs[Attribute.EXTRACTABLE] = extractable
        attrs.update({attr: attr in usage for attr in _USAGE})
    return Template(attrs)


#: The entry points of CK_FUNCTION_LIST, in its order (PKCS#11 v2.40, pkcs11f.h).
FUNCTIONS = (
    "C_Initialize", "C_Finalize", "C_GetInfo", "C_GetFunctionList", "C_GetSlotList",
    "C_GetSlotInfo", "C_GetTokenInfo", "C_GetMechanismList", "C_GetMechanismInfo", "C_InitToken",
    "C_InitPIN", "C_SetPIN", "C_OpenSession", "C_CloseSession", "C_CloseAllSessions",
    "C_GetSessionInfo", "C_GetOperationState", "C_SetOperationState", "C_Login", "C_Logout",
    "C_CreateObject", "C_CopyObject", "C_DestroyObject", "C_GetObjectSize",
    "C_GetAttributeValue", "C_SetAttributeValue", "C_FindObjectsInit", "C_FindObjects",
    "C_FindObjectsFinal", "C_EncryptInit", "C_Encrypt", "C_EncryptUpdate", "C_EncryptFinal",
    "C_DecryptInit", "C_Decrypt", "C_DecryptUpdate", "C_DecryptFinal", "C_DigestInit",
    "C_Digest", "C_DigestUpdate", "C_DigestKey", "C_DigestFinal", "C_SignInit", "C_Sign",
    "C_SignUpdate", "C_SignFinal", "C_SignRecoverInit", "C_SignRecover", "C_VerifyInit",
    "C_Verify", "C_VerifyUpdate", "C_VerifyFinal", "C_VerifyRecoverInit", "C_VerifyRecover",
    "C_DigestEncryptUpdate", "C_DecryptDigestUpdate", "C_SignEncryptUpdate",
    "C_DecryptVerifyUpdate", "C_GenerateKey", "C_GenerateKeyPair", "C_WrapKey", "C_UnwrapKey",
    "C_DeriveKey", "C_SeedRandom", "C_GenerateRandom", "C_GetFunctionStatus",
    "C_CancelFunction", "C_WaitForSlotEvent",
)  # fmt: skip


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_ubyte), ("minor", ctypes.c_ubyte)]


class _FunctionList(ctypes.Structure):
    """CK_FUNCTION_LIST."""

    _fields_ = [("version", _Version), *((name, ctypes.c_void_p) for name in FUNCTIONS)]


def entry_points(lib: ctypes.CDLL) -> dict[str, int]:
    """The addresses of the module's functions from its ``C_GetFunctionList``."""
    get = lib.C_GetFunctionList
    get.restype = _ULONG
    get.argtypes = [ctypes.POINTER(ctypes.POINTER(_FunctionList))]
    table = ctypes.POINTER(_FunctionList)()
    rv = get(ctypes.byref(table))
    if rv or not table:
        raise HsmError("C_GetFunctionList failed", ckr=_CKR_NAMES.get(rv, f"CKR_0x{rv:08X}"))
    found = {name: getattr(table.contents, name) for name in FUNCTIONS}
    return {name: address for name, address in found.items() if address}


class FastOps:
    """The per-card calls. Caller holds :data:`hsm.pkcs11.LOCK` and passes live handles.
    ``lib`` a :class:`ctypes.PyDLL`: the calls hold the GIL (see :mod:`hsm.internal_auth`).

    Every argument but the caller's handles and data is built once and passed as a plain
    address (``c_void_p`` from an int is ctypes' cheapest conversion): one CK_MECHANISM per
    mechanism (the derivation's pointing at the one CK_KEY_DERIVATION_STRING_DATA, the CBC's at
    the one IV buffer), the templates' arrays (:attr:`Template.address`), the output buffer and
    its length. Outputs are read by slicing the buffer."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        functype = ctypes.PYFUNCTYPE if isinstance(lib, ctypes.PyDLL) else ctypes.CFUNCTYPE
        table = entry_points(lib)
        ptr = ctypes.c_void_p

        def fn(name: str, *argtypes: Any) -> Any:  # ints are converted in C, not by ctypes
            if name not in table:
                raise MechanismUnavailable(f"the PKCS#11 module has no {name}")
            return functype(_ULONG, *argtypes)(table[name])

        self._derive_key = fn("C_DeriveKey", _ULONG, ptr, _ULONG, ptr, _ULONG, ptr)
        self._destroy = fn("C_DestroyObject", _ULONG, _ULONG)
        self._wrap = fn("C_WrapKey", _ULONG, ptr, _ULONG, _ULONG, ptr, ptr)
        self._encrypt_init = fn("C_EncryptInit", _ULONG, ptr, _ULONG)
        self._encrypt = fn("C_Encrypt", _ULONG, ctypes.c_char_p, _ULONG, ptr, ptr)
        self._unwrap = fn("C_UnwrapKey", _ULONG, ptr, _ULONG, ctypes.c_char_p, _ULONG, ptr,
                          _ULONG, ptr)  # fmt: skip
        #: the structures the addresses point into (kept alive with this object)
        self._kept: list[Any] = []
        self._data = ctypes.create_string_buffer(16)
        self._kds = _DerivationData(ctypes.addressof(self._data), 16)
        self._iv = ctypes.create_string_buffer(16)
        self._out = _ULONG()
        self._len = _ULONG()
        self._buf: Any = ctypes.create_string_buffer(512)  # a slice of it is bytes
        self._size = len(self._buf)
        self._out_at = ctypes.addressof(self._out)
        self._len_at = ctypes.addressof(self._len)
        self._buf_at = ctypes.addressof(self._buf)
        #: CK_MECHANISM addresses: derivation by algorithm, ECB and CBC by algorithm, others
        #: by mechanism code (built on first use: SM4's once its numbers are registered)
        self._derive_at: dict[Algorithm, int] = {}
        self._ecb_at: dict[Algorithm, int] = {}
        self._cbc_at: dict[Algorithm, int] = {}
        self._plain_at: dict[int, int] = {}
        self._kwp_at = self._plain(_KWP_CODE)

    def _mechanism(self, code: int, parameter: int | None, length: int) -> int:
        mech = _Mechanism(code, parameter, length)
        self._kept.append(mech)
        return ctypes.addressof(mech)

    def _plain(self, code: int) -> int:
        """A CK_MECHANISM without parameter."""
        at = self._plain_at.get(code)
        if at is None:
            at = self._plain_at[code] = self._mechanism(code, None, 0)
        return at

    def _derive_mechanism(self, alg: Algorithm) -> int:
        at = self._derive_at[alg] = self._mechanism(
            _DERIVE_CODE[alg], ctypes.addressof(self._kds), ctypes.sizeof(self._kds)
        )
        return at

    def _ecb_mechanism(self, alg: Algorithm) -> int:
        at = self._ecb_at[alg] = self._plain(_ECB_CODE[alg])
        return at

    def _cbc_mechanism(self, alg: Algorithm) -> int:
        at = self._cbc_at[alg] = self._mechanism(
            _CBC_CODE[alg], ctypes.addressof(self._iv), alg.block_size
        )
        return at

    @staticmethod
    def _check(rv: int, what: str) -> None:
        if rv:
            name = _CKR_NAMES.get(rv, f"CKR_0x{rv:08X}")
            if rv in (0x60, 0x82, 0x113):
                raise KeyNotFound(f"{what}: invalid key handle", ckr=name)
            if rv in (0x70, 0x71):
                raise MechanismUnavailable(f"{what}: mechanism not offered", ckr=name)
            raise HsmError(f"{what} failed", ckr=name)

    def derive(self, session: int, base: int, alg: Algorithm, data: bytes, tmpl: Template) -> int:
        """``C_DeriveKey(CKM_*_ECB_ENCRYPT_DATA)`` of 16 bytes of data: the new key's handle."""
        if len(data) != 16:
            raise ValueError("derivation data is 16 bytes")
        self._data.raw = data
        mech = self._derive_at.get(alg) or self._derive_mechanism(alg)
        rv = self._derive_key(session, mech, base, tmpl.address, tmpl.count, self._out_at)
        if rv:
            self._check(rv, "deriving a card key")
        return self._out.value

    def destroy(self, session: int, handle: int) -> None:
        rv = self._destroy(session, handle)
        if rv:
            self._check(rv, "destroying a card key")

    def wrap_kwp(self, session: int, wrapping: int, key: int) -> bytes:
        """``C_WrapKey(CKM_AES_KEY_WRAP_PAD)`` in one call (RFC 5649 of a 16-byte key: 24)."""
        self._len.value = self._size
        rv = self._wrap(session, self._kwp_at, wrapping, key, self._buf_at, self._len_at)
        if rv:
            self._check(rv, "wrapping a card key")
        return self._buf[: self._len.value]

    def wrap_with(self, session: int, mechanism: int, wrapping: int, key: int) -> bytes:
        """``C_WrapKey(mechanism)`` in one call (SM4 cards: the vendor's SM4-ECB)."""
        self._len.value = self._size
        rv = self._wrap(session, self._plain(int(mechanism)), wrapping, key, self._buf_at,
                        self._len_at)  # fmt: skip
        if rv:
            self._check(rv, "wrapping a card key")
        return self._buf[: self._len.value]

    def unwrap_kwp(self, session: int, unwrapping: int, wrapped: bytes, tmpl: Template) -> int:
        """``C_UnwrapKey(CKM_AES_KEY_WRAP_PAD)``: a new key object (``tmpl``) from ``wrapped``
        (RFC 5649 under ``unwrapping``); its handle. A wrong key or altered data fails the
        RFC 5649 integrity check inside the HSM (CKR_WRAPPED_KEY_INVALID and the like)."""
        rv = self._unwrap(session, self._kwp_at, unwrapping, wrapped, len(wrapped),
                          tmpl.address, tmpl.count, self._out_at)  # fmt: skip
        self._check(rv, "unwrapping a key")
        return int(self._out.value)

    def encrypt_ecb(self, session: int, key: int, alg: Algorithm, data: bytes) -> bytes:
        """``C_EncryptInit(CKM_*_ECB)`` + ``C_Encrypt`` of whole blocks."""
        if len(data) % alg.block_size or len(data) > self._size:
            raise ValueError("ECB input must be whole blocks")
        rv = self._encrypt_init(session, self._ecb_at.get(alg) or self._ecb_mechanism(alg), key)
        if rv:
            self._check(rv, "encrypting")
        self._len.value = self._size
        rv = self._encrypt(session, data, len(data), self._buf_at, self._len_at)
        if rv:
            self._check(rv, "encrypting")
        return self._buf[: self._len.value]

    def encrypt_cbc(self, session: int, key: int, alg: Algorithm, data: bytes, iv: bytes) -> bytes:
        """``C_EncryptInit(CKM_*_CBC, iv)`` + ``C_Encrypt`` of whole blocks (MAC algorithm 1
        keeps the last block)."""
        size = alg.block_size
        if len(data) % size or len(iv) != size:
            raise ValueError("CBC input must be whole blocks, the IV one block")
        self._iv.raw = iv
        rv = self._encrypt_init(session, self._cbc_at.get(alg) or self._cbc_mechanism(alg), key)
        if rv:
            self._check(rv, "encrypting (CBC)")
        buf: Any
        if len(data) <= self._size:
            buf, at = self._buf, self._buf_at
        else:
            buf = ctypes.create_string_buffer(len(data))
            at = ctypes.addressof(buf)
        self._len.value = len(buf)
        rv = self._encrypt(session, data, len(data), at, self._len_at)
        if rv:
            self._check(rv, "encrypting (CBC)")
        return buf[: self._len.value]


_CACHE: dict[tuple[str, bool], FastOps] = {}


def fast_ops(module_path: str, *, hold_gil: bool = False) -> FastOps:
    """The direct calls of this module (one per process and module; ``hold_gil``: through
    :class:`ctypes.PyDLL`)."""
    key = (module_path, hold_gil)
    ops = _CACHE.get(key)
    if ops is None:
        try:
            lib = ctypes.PyDLL(module_path) if hold_gil else ctypes.CDLL(module_path)
            ops = _CACHE[key] = FastOps(lib)
        except (OSError, AttributeError) as exc:
            raise HsmUnavailable(f"{module_path} is not a loadable PKCS#11 module: {exc}") from exc
    return ops
