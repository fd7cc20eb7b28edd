"""HSM configuration: the frozen settings of this package (built by the composition root from
``[hsm]``, :meth:`yikatong.settings.Settings.hsm_config`).

Any vendor's PKCS#11 module is used by configuration (module path, token label, PIN source);
SoftHSM2 (the default) additionally gets a project-local configuration file and token dir.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class HsmConfig:
    module: Path
    token_label: str
    pin_source: Callable[[], str] = field(repr=False, compare=False)
    so_pin: str = field(default="", repr=False, compare=False)
    #: SoftHSM2 only: its configuration file and token directory.
    softhsm_conf: Path | None = None
    tokens_dir: Path | None = None
    #: GB/T 2260 code of the issuing region (province-level diversification).
    region_code: str = "330100"
    #: SM mechanism table (``hsm.vendors``); ``standard``: none.
    vendor: str = "standard"
    #: The SM test module only (``hsm.smtoken``): its configuration file and token directory.
    sm_conf: Path | None = None
    sm_store: Path | None = None
    #: The key that signs the status feed and audit checkpoints: ``ecdsa-p256`` or ``sm2``.
    signing: str = "ecdsa-p256"

    @property
    def is_softhsm(self) -> bool:
        return "softhsm" in self.module.name.lower()

    @property
    def is_sm_test_module(self) -> bool:
        """The SM test module (``hsm.smtoken``): the composition root gave it its files."""
        return self.sm_conf is not None

    def user_pin(self) -> str:
        return self.pin_source()
