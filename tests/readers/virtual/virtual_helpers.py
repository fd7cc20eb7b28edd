"""Helpers for the virtual reader tests (importable: ``from virtual_helpers import ...``)."""

from __future__ import annotations

from pathlib import Path

from virtual_fakecard import FileCard

from readers.virtual import VirtualReaderStack

HERE = Path(__file__).resolve().parent
FAKE_FACTORY = "virtual_fakecard:load"
DF_NAME = bytes.fromhex("D15600000501")


def make_stack(run_dir: Path, readers: int = 2, **kwargs: object) -> VirtualReaderStack:
    return VirtualReaderStack(
        run_dir,
        readers,
        card_factory=FAKE_FACTORY,
        python_path=[HERE],
        **kwargs,  # type: ignore[arg-type]
    )


def fake_image(path: Path, content: bytes) -> Path:
    """A file card whose EF 2F01 (under the MF) and EF DF01/0005 hold ``content``."""
    return FileCard.write_image(
        path, {"3F00/2F01": content, "3F00/DF01/0005": content[::-1]}, {DF_NAME: "3F00/DF01"}
    )


def stack_processes(run_dir: Path) -> list[int]:
    """PIDs of live processes whose command line mentions ``run_dir`` (server, pcscd)."""
    needle = str(run_dir.resolve()).encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in cmdline and state != "Z":
            pids.append(int(entry.name))
    return pids
