"""Shared internals of the emulator: status aborts and the per-profile look-up index."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from cardspec.keyscheme import KeySlot
from cardspec.profile import CardProfile, DedicatedFile, ElementaryFile, KeySpec, PinSpec


class Status(Exception):
    """Internal: abort the command with this status word."""

    def __init__(self, sw: int) -> None:
        super().__init__(f"{sw:04X}")
        self.sw = sw


@dataclass(frozen=True)
class Index:
    """Look-up tables precomputed once per profile (no per-APDU walking)."""

    dfs: dict[str, DedicatedFile]
    by_name: dict[bytes, str]
    parent: dict[str, str | None]
    efs: dict[str, ElementaryFile]
    ef_by_sfi: dict[tuple[str, int], str]
    ef_by_fid: dict[tuple[str, int], str]
    df_by_fid: dict[tuple[str, int], str]
    keys_by_id: dict[int, tuple[str, KeySpec]]
    key_df: dict[KeySlot, str]
    key_by_slot: dict[KeySlot, KeySpec]
    pins_by_ref: dict[int, list[tuple[str, PinSpec]]]
    pins_by_name: dict[str, tuple[str, PinSpec]]


@cache
def index(profile: CardProfile) -> Index:
    dfs: dict[str, DedicatedFile] = {}
    parent: dict[str, str | None] = {}
    by_name: dict[bytes, str] = {}
    efs: dict[str, ElementaryFile] = {}
    ef_by_sfi: dict[tuple[str, int], str] = {}
    ef_by_fid: dict[tuple[str, int], str] = {}
    df_by_fid: dict[tuple[str, int], str] = {}
    for path, df in profile.walk():
        dfs[path] = df
        parent[path] = path.rsplit("/", 1)[0] if "/" in path else None
        if df.df_name:
            by_name[df.df_name] = path
        for child in df.children:
            df_by_fid[(path, child.fid)] = f"{path}/{child.name}"
        for ef in df.files:
            ef_path = f"{path}/{ef.name}"
            efs[ef_path] = ef
            ef_by_fid[(path, ef.fid)] = ef_path
            if ef.sfi is not None:
                ef_by_sfi[(path, ef.sfi)] = ef_path
    keys_by_id = {k.key_id: (p, k) for p, k in profile.key_specs()}
    key_df = {k.slot: p for p, k in profile.key_specs()}
    key_by_slot = {k.slot: k for _, k in profile.key_specs()}
    pins_by_ref: dict[int, list[tuple[str, PinSpec]]] = {}
    for p, spec in profile.pin_specs():
        pins_by_ref.setdefault(spec.ref, []).append((p, spec))
    pins_by_name = {spec.name: (p, spec) for p, spec in profile.pin_specs()}
    return Index(dfs, by_name, parent, efs, ef_by_sfi, ef_by_fid, df_by_fid, keys_by_id,
                  key_df, key_by_slot, pins_by_ref, pins_by_name)  # fmt: skip


def within(path: str, scope: str) -> bool:
    """``path`` is ``scope`` or a descendant of it."""
    return path == scope or path.startswith(scope + "/")
