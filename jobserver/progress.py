"""The jobclient's progress display: a live bar on a terminal, count lines elsewhere."""

from __future__ import annotations

import time
from types import TracebackType
from typing import TYPE_CHECKING, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

if TYPE_CHECKING:
    from jobserver.client import JobOutcome

PROGRESS_LINE_STEP = 0.1  # a plain line each time another tenth of the jobs answered


class ProgressBar:
    """A live rich bar on a terminal: answered / total, failures, elapsed time."""

    def __init__(self, total: int, console: Console) -> None:
        self._failed = 0
        self._progress = Progress(
            TextColumn("jobs"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[failed]} failed"),
            TimeElapsedColumn(),
            console=console,
        )
        self._task = self._progress.add_task("jobs", total=total, failed=0)

    def __enter__(self) -> ProgressBar:
        self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._progress.stop()

    def __call__(self, outcome: JobOutcome) -> None:
        self._failed += 0 if outcome.succeeded else 1
        self._progress.update(self._task, advance=1, failed=self._failed)


class ProgressLines:
    """Without a terminal: a plain count line each time another tenth of the jobs answered."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self._total = total
        self._stream = stream
        self._answered = 0
        self._failed = 0
        self._next_line = min(total, max(1, int(total * PROGRESS_LINE_STEP)))
        self._started = time.perf_counter()

    def __call__(self, outcome: JobOutcome) -> None:
        self._answered += 1
        self._failed += 0 if outcome.succeeded else 1
        if self._answered >= self._next_line:
            elapsed = time.perf_counter() - self._started
            print(
                f"answered {self._answered}/{self._total} jobs "
                f"({self._failed} failed) in {elapsed:.3f} s",
                file=self._stream,
                flush=True,
            )
            step = max(1, int(self._total * PROGRESS_LINE_STEP))
            self._next_line = min(self._total, (self._answered // step + 1) * step)
