"""The console's own frozen config: ``[console]`` and what it hands the domain.

The root schema (:class:`yikatong.settings.Settings`) extends :class:`ConsoleConfig`; the console
is typed against it (:class:`console.common.HostContext`), so it reads its own section and the
domain's (:class:`issuance.settings.IssuanceConfig`), never the HSM's or the API's.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from issuance.settings import IssuanceConfig


class ConsoleSettings(BaseModel):
    """The web console (``/console``, served by ``ykt serve``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: A console session ends after this many minutes without a request.
    idle_minutes: int = Field(default=15, ge=1, le=24 * 60)
    #: ``zh_CN`` or ``en``: the language of a browser that has not chosen one.
    default_locale: Literal["zh_CN", "en"] = "zh_CN"
    #: Failed sign-ins of one user from one address before each further one waits.
    sign_in_free_failures: int = Field(default=5, ge=1)
    #: The longest wait (seconds) after repeated failures (it doubles up to this; never a
    #: permanent lock, and other addresses are not affected).
    sign_in_max_wait_seconds: int = Field(default=900, ge=1)


class ConsoleConfig(IssuanceConfig):
    """What the console reads: the domain's sections and ``[console]``."""

    console: ConsoleSettings = ConsoleSettings()
