"""The SM test module (``ykt_smp11.c``): a PKCS#11 module with SM4, SM3 and SM2, for tests and
the demo only.

No installable token offers SM4, so the project builds one (``scripts/setup.sh`` runs
:func:`build`): a small PKCS#11 v2.40 module over OpenSSL 3's default provider that offers
exactly the vendor mechanisms of one table of :mod:`hsm.vendors`, keeps sensitive keys' values
inside it (``C_GetAttributeValue(CKA_VALUE)`` answers ``CKR_ATTRIBUTE_SENSITIVE``) and stores
its token objects in a file encrypted under a key unlocked by the PIN. Like the card emulator
stands in for a chip, it stands in for a vendor HSM: the code reaches it only through PKCS#11
(python-pkcs11, and the same direct ``C_*`` calls as :mod:`hsm.p11fast`). It is not an HSM:
keys are in the memory of the process that loaded it.

Everything is under ``<data_dir>/hsm/sm``: ``smp11.conf`` (read by the module from
``YKT_SMP11_CONF``, set by :mod:`hsm.pkcs11` before loading it, as ``SOFTHSM2_CONF`` for
SoftHSM2) and the token directory. The token is initialised through the module itself
(``C_InitToken`` + ``C_InitPIN``, PKCS#11 calls with the SO PIN), in a subprocess so this
process loads the module only when it uses it (after any fork).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from hsm.errors import HsmError, HsmUnavailable
from hsm.vendors import SmMechanisms

if TYPE_CHECKING:
    from hsm.config import HsmConfig

SOURCE = Path(__file__).with_name("ykt_smp11.c")
LIBRARY_NAME = "libykt-smp11.so"
CONF_ENV = "YKT_SMP11_CONF"
INCLUDE = "/usr/include/p11-kit-1"  # Debian libp11-kit-dev: pkcs11.h (OASIS PKCS#11 v2.40)


def is_sm_test_module(module: Path) -> bool:
    return module.name == LIBRARY_NAME


def build(out_dir: Path) -> Path:
    """Compile the module into ``out_dir`` if missing or older than its source; its path."""
    out = out_dir / LIBRARY_NAME
    if out.exists() and out.stat().st_mtime >= SOURCE.stat().st_mtime:
        return out
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise HsmUnavailable("no C compiler to build the SM test module (install gcc)")
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".so.tmp")
    proc = subprocess.run(
        [cc, "-O2", "-Wall", "-fPIC", "-shared", f"-I{INCLUDE}", "-o", str(tmp), str(SOURCE),
         "-lcrypto"],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    if proc.returncode != 0:
        raise HsmUnavailable(
            "building the SM test module failed (needs gcc, libssl-dev, libp11-kit-dev): "
            + proc.stderr.strip()[-2000:]
        )
    tmp.replace(out)
    return out


def write_conf(conf: Path, store: Path, mechanisms: SmMechanisms) -> Path:
    """The module's configuration: token directory and exactly the table's mechanisms."""
    store.mkdir(parents=True, exist_ok=True, mode=0o700)
    conf.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        f"# SM test module configuration (vendor table {mechanisms.name!r}, hsm.vendors)",
        f"store = {store}",
        *(f"{key} = 0x{value:08X}" for key, value in mechanisms.module_conf().items()),
    ]
    conf.write_text("\n".join(lines) + "\n", encoding="utf-8")
    conf.chmod(0o600)
    return conf


_INIT_SCRIPT = r"""
import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])
label, so_pin, user_pin = (a.encode() for a in sys.argv[2:5])
UL = ctypes.c_ulong
def ok(rv, what):
    if rv:
        sys.exit(f"{what}: CKR 0x{rv:X}")
ok(lib.C_Initialize(None), "C_Initialize")
ok(lib.C_InitToken(UL(0), so_pin, UL(len(so_pin)), label.ljust(32)[:32]), "C_InitToken")
h = UL()
ok(lib.C_OpenSession(UL(0), UL(6), None, None, ctypes.byref(h)), "C_OpenSession")
ok(lib.C_Login(h, UL(0), so_pin, UL(len(so_pin))), "C_Login(SO)")
ok(lib.C_InitPIN(h, user_pin, UL(len(user_pin))), "C_InitPIN")
ok(lib.C_Logout(h), "C_Logout")
ok(lib.C_CloseSession(h), "C_CloseSession")
lib.C_Finalize(None)
"""


def initialised(store: Path) -> bool:
    return (store / "token.bin").exists()


def init_token(module: Path, conf: Path, label: str, so_pin: str, user_pin: str) -> None:
    """``C_InitToken`` + ``C_InitPIN`` through the module, in a subprocess (PINs on its command
    line stay out of any log: errors repeat only the CKR code)."""
    env = {**os.environ, CONF_ENV: str(conf)}
    proc = subprocess.run(
        [sys.executable, "-c", _INIT_SCRIPT, str(module), label, so_pin, user_pin],
        env=env, capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    if proc.returncode != 0:
        raise HsmError(f"initialising the SM test token failed: {proc.stderr.strip()[-300:]}")


def ensure_token(config: HsmConfig) -> bool:
    """Build the module if missing, write its configuration (the ``[hsm] vendor`` table) and
    initialise the token if absent (SO PIN, label and user PIN from the configuration).
    Returns True if a token was created."""
    from hsm.vendors import table

    mechanisms = table(config.vendor)
    if mechanisms is None:
        raise HsmError(
            "the SM test module needs an SM mechanism table: set [hsm] vendor (hsm.vendors)"
        )
    if config.sm_conf is None or config.sm_store is None:
        raise HsmError("not an SM test module configuration (no sm_conf)")
    if not config.module.exists():
        build(config.module.parent)
    write_conf(config.sm_conf, config.sm_store, mechanisms)
    if initialised(config.sm_store):
        return False
    init_token(config.module, config.sm_conf, config.token_label, config.so_pin, config.user_pin())
    return True
