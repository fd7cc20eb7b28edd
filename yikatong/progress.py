"""Rich progress bars, one per stage, for the batch pipeline and the demo (thread-safe: the
stations report from their own threads)."""

from __future__ import annotations

import threading
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class RichProgress:
    """Implements :class:`issuance.batches.pipeline.Progress` with one bar per stage."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._progress = Progress(
            TextColumn("[bold]{task.description:<12}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
        )
        self._tasks: dict[str, TaskID] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.stop()

    def start(self, stage: str, total: int, done: int = 0) -> None:
        with self._lock:
            task = self._tasks.get(stage)
            if task is None:
                self._tasks[stage] = self._progress.add_task(stage, total=total, completed=done)
            else:
                self._progress.update(task, total=total, completed=done)

    def advance(self, stage: str, n: int = 1) -> None:
        with self._lock:
            task = self._tasks.get(stage)
            if task is None:
                task = self._tasks[stage] = self._progress.add_task(stage, total=None)
            self._progress.advance(task, n)

    def note(self, message: str) -> None:
        self._progress.console.print(message, highlight=False)
