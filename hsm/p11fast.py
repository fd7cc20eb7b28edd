"""Direct PKCS#11 calls for the per-card hot path of data preparation.

python-pkcs11 is convenient but costs more than the HSM itself on the calls a data
preparation makes millions of times (measured on SoftHSM2, DES3): ``derive_key`` +
``destroy`` 150-190 us against 60-67 us for the same ``C_DeriveKey`` + ``C_DestroyObject``
called directly. Its ``derive_key`` reads the base key's type (C_GetAttributeValue) and, to
build the Python object, several attributes of the new key; it packs the template attribute
by attribute on every call; ``wrap_key`` calls ``C_WrapKey`` twice (size query, then the
wrap). Here the same PKCS#11 v2.40 functions are called with ctypes: templates are built once,
wrap and encrypt use a buffer of the known size (one call), handles are plain integers.

Sessions, login, object look-up and everything else stay with python-pkcs11 (:mod:`hsm.pkcs11`);
this module only takes their handles (``session.handle``, ``key.handle``), under the same
process-wide lock. The library is opened with ``ctypes.CDLL`` on the path python-pkcs11 already
loaded: ``dlopen`` returns the same instance (same sessions, same login). Modules that do not
export the ``C_*`` symbols (the standard only requires ``C_GetFunctionList``) get no fast path
(:func:`fast_ops` returns None) and the service falls back to python-pkcs11.
"""

from __future__ import annotations

import ctypes
from typing import Any

from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

from cardspec.keyscheme import Algorithm
from hsm.errors import HsmError, KeyNotFound, MechanismUnavailable

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


class FastOps:
    """The hot-path calls. Caller holds :data:`hsm.pkcs11.LOCK` and passes live handles."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._derive_key = lib.C_DeriveKey
        self._destroy = lib.C_DestroyObject
        self._wrap = lib.C_WrapKey
        self._encrypt_init = lib.C_EncryptInit
        self._encrypt = lib.C_Encrypt
        self._unwrap = lib.C_UnwrapKey
        ptr, ulong_p = ctypes.c_void_p, ctypes.POINTER(_ULONG)
        signatures: list[tuple[Any, list[Any]]] = [
            (self._derive_key, [_ULONG, ptr, _ULONG, ptr, _ULONG, ulong_p]),
            (self._destroy, [_ULONG, _ULONG]),
            (self._wrap, [_ULONG, ptr, _ULONG, _ULONG, ptr, ulong_p]),
            (self._encrypt_init, [_ULONG, ptr, _ULONG]),
            (self._encrypt, [_ULONG, ctypes.c_char_p, _ULONG, ptr, ulong_p]),
            (self._unwrap, [_ULONG, ptr, _ULONG, ctypes.c_char_p, _ULONG, ptr, _ULONG, ulong_p]),
        ]
        for fn, argtypes in signatures:  # ints are converted in C, not by ctypes objects
            fn.restype = _ULONG
            fn.argtypes = argtypes
        self._data = ctypes.create_string_buffer(16)
        self._kds = _DerivationData(ctypes.cast(self._data, ctypes.c_void_p), 16)
        self._derive_mech = _Mechanism(0, ctypes.cast(ctypes.byref(self._kds), ctypes.c_void_p),
                                       ctypes.sizeof(self._kds))  # fmt: skip
        self._plain_mech = _Mechanism(0, None, 0)
        self._iv = ctypes.create_string_buffer(16)
        self._iv_mech = _Mechanism(0, ctypes.cast(self._iv, ctypes.c_void_p), 16)
        self._iv_mech_p = ctypes.byref(self._iv_mech)
        self._out = _ULONG()
        self._len = _ULONG()
        self._buf = ctypes.create_string_buffer(512)
        self._size = len(self._buf)
        self._derive_mech_p = ctypes.byref(self._derive_mech)
        self._plain_mech_p = ctypes.byref(self._plain_mech)
        self._out_p = ctypes.byref(self._out)
        self._len_p = ctypes.byref(self._len)

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
        self._derive_mech.mechanism = _DERIVE_CODE[alg]
        rv = self._derive_key(session, self._derive_mech_p, base, tmpl.array, tmpl.count,
                              self._out_p)  # fmt: skip
        if rv:
            self._check(rv, "deriving a card key")
        return self._out.value

    def destroy(self, session: int, handle: int) -> None:
        rv = self._destroy(session, handle)
        if rv:
            self._check(rv, "destroying a card key")

    def wrap_kwp(self, session: int, wrapping: int, key: int) -> bytes:
        """``C_WrapKey(CKM_AES_KEY_WRAP_PAD)`` in one call (RFC 5649 of a 16-byte key: 24)."""
        self._plain_mech.mechanism = _KWP_CODE
        self._len.value = self._size
        rv = self._wrap(session, self._plain_mech_p, wrapping, key, self._buf, self._len_p)
        if rv:
            self._check(rv, "wrapping a card key")
        return ctypes.string_at(self._buf, self._len.value)

    def wrap_with(self, session: int, mechanism: int, wrapping: int, key: int) -> bytes:
        """``C_WrapKey(mechanism)`` in one call (SM4 cards: the vendor's SM4-ECB)."""
        self._plain_mech.mechanism = mechanism
        self._len.value = self._size
        rv = self._wrap(session, self._plain_mech_p, wrapping, key, self._buf, self._len_p)
        if rv:
            self._check(rv, "wrapping a card key")
        return ctypes.string_at(self._buf, self._len.value)

    def unwrap_kwp(self, session: int, unwrapping: int, wrapped: bytes, tmpl: Template) -> int:
        """``C_UnwrapKey(CKM_AES_KEY_WRAP_PAD)``: a new key object (``tmpl``) from ``wrapped``
        (RFC 5649 under ``unwrapping``); its handle. A wrong key or altered data fails the
        RFC 5649 integrity check inside the HSM (CKR_WRAPPED_KEY_INVALID and the like)."""
        self._plain_mech.mechanism = int(Mechanism.AES_KEY_WRAP_PAD)
        rv = self._unwrap(session, self._plain_mech_p, unwrapping, wrapped, len(wrapped),
                          tmpl.array, tmpl.count, self._out_p)  # fmt: skip
        self._check(rv, "unwrapping a key")
        return int(self._out.value)

    def encrypt_ecb(self, session: int, key: int, alg: Algorithm, data: bytes) -> bytes:
        """``C_EncryptInit(CKM_*_ECB)`` + ``C_Encrypt`` of whole blocks."""
        if len(data) % alg.block_size or len(data) > len(self._buf):
            raise ValueError("ECB input must be whole blocks")
        self._plain_mech.mechanism = _ECB_CODE[alg]
        rv = self._encrypt_init(session, self._plain_mech_p, key)
        if rv:
            self._check(rv, "encrypting")
        self._len.value = self._size
        rv = self._encrypt(session, data, len(data), self._buf, self._len_p)
        if rv:
            self._check(rv, "encrypting")
        return ctypes.string_at(self._buf, self._len.value)

    def encrypt_cbc(self, session: int, key: int, alg: Algorithm, data: bytes, iv: bytes) -> bytes:
        """``C_EncryptInit(CKM_*_CBC, iv)`` + ``C_Encrypt`` of whole blocks (MAC algorithm 1
        keeps the last block)."""
        if len(data) % alg.block_size or len(iv) != alg.block_size:
            raise ValueError("CBC input must be whole blocks, the IV one block")
        self._iv.raw = iv.ljust(16, b"\x00")
        self._iv_mech.mechanism = _CBC_CODE[alg]
        self._iv_mech.ulParameterLen = len(iv)
        rv = self._encrypt_init(session, self._iv_mech_p, key)
        if rv:
            self._check(rv, "encrypting (CBC)")
        buf = self._buf if len(data) <= self._size else ctypes.create_string_buffer(len(data))
        self._len.value = len(buf)
        rv = self._encrypt(session, data, len(data), buf, self._len_p)
        if rv:
            self._check(rv, "encrypting (CBC)")
        return ctypes.string_at(buf, self._len.value)


_CACHE: dict[str, FastOps | None] = {}


def fast_ops(module_path: str) -> FastOps | None:
    """The fast path for this module, or None if it does not export the ``C_*`` functions."""
    if module_path not in _CACHE:
        try:
            _CACHE[module_path] = FastOps(ctypes.CDLL(module_path))
        except (OSError, AttributeError):
            _CACHE[module_path] = None
    return _CACHE[module_path]
