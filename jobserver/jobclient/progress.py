"""The jobclient's progress display: the original's live line on a terminal, count lines elsewhere.

On a terminal one line is redrawn in place, in the original client's form::

     37 / 50 [========================================>--------------]  74.00 % 1s

answered / total, a bar as wide as the terminal allows, the share answered with two
decimals and the elapsed whole seconds. When the run ends the line stays, followed by a
blank line, as the original's did. Without a terminal, plain count lines are printed
instead, each time another tenth of the jobs has answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import TextIO

from jobserver.jobclient.run import JobOutcome

PROGRESS_LINE_STEP = 0.1  # a plain line each time another tenth of the jobs answered
REFRESH_SECONDS = 0.2  # the live line's clock ticks even while no answer arrives
FALLBACK_COLUMNS = 80  # a terminal that does not tell its width (a fresh pty says 0)
MIN_BAR_WIDTH = 10


def progress_line(done: int, total: int, elapsed: float, columns: int) -> str:
    """The live line: `` 50 / 50 [====...====] 100.00 % 1s``, one column short of ``columns``.

    The bar takes the room the other parts leave, so the line keeps its length as the
    counts grow and each redraw covers the last. It is filled as the original's was:
    ``=`` for what is done (rounded up), ``>`` at its head, ``-`` for the rest.
    """
    counters = f" {done} / {total} "
    percent = f" {100 * done / total:6.2f} % "
    seconds = f"{int(elapsed)}s"
    # Leave the last column free: writing into it makes some terminals wrap the line.
    width = max(MIN_BAR_WIDTH, columns - 1 - len(counters) - len(percent) - len(seconds) - 2)
    filled = min(width, math.ceil(width * done / total))
    if filled == width:
        bar = "=" * width
    elif filled > 0:
        bar = "=" * (filled - 1) + ">" + "-" * (width - filled)
    else:
        bar = "-" * width
    return f"{counters}[{bar}]{percent}{seconds}"


def terminal_columns(stream: TextIO) -> int:
    """The width of the terminal behind ``stream``, or :data:`FALLBACK_COLUMNS`."""
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError):
        return FALLBACK_COLUMNS
    return columns or FALLBACK_COLUMNS


class RunClock:
    """The run's elapsed time on the report's own clock: from the first request sent to
    the last answer, so that the progress shown at the end is the report's Total
    Duration. Before any answer, from when the display began."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._began = clock()
        self._first_sent: float | None = None
        self._last_answered = -math.inf

    def begin(self) -> None:
        self._began = self._clock()

    def heard(self, outcome: JobOutcome) -> None:
        if self._first_sent is None or outcome.sent_at < self._first_sent:
            self._first_sent = outcome.sent_at
        self._last_answered = max(self._last_answered, outcome.answered_at)

    def elapsed(self, *, final: bool = False) -> float:
        """Seconds so far; ``final``: up to the last answer, as Total Duration counts."""
        start = self._began if self._first_sent is None else self._first_sent
        end = self._last_answered if final and self._first_sent is not None else self._clock()
        return max(0.0, end - start)


class ProgressLine:
    """The live line on a terminal, redrawn on every answer and every :data:`REFRESH_SECONDS`."""

    def __init__(
        self, total: int, stream: TextIO, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self._total = total
        self._stream = stream
        self._run = RunClock(clock)
        self._done = 0

    def __call__(self, outcome: JobOutcome) -> None:
        self._done += 1
        self._run.heard(outcome)
        self.draw()

    def draw(self, *, final: bool = False) -> None:
        elapsed = self._run.elapsed(final=final)
        line = progress_line(self._done, self._total, elapsed, terminal_columns(self._stream))
        self._stream.write("\r" + line)
        self._stream.flush()

    @contextlib.asynccontextmanager
    async def shown(self) -> AsyncIterator[None]:
        """Show the line for the block (the run), then leave it with a blank line after it."""
        self._run.begin()
        self.draw()
        ticker = asyncio.create_task(self._tick())
        try:
            yield
        finally:
            ticker.cancel()
            await asyncio.wait([ticker])
            self.draw(final=True)
            self._stream.write("\n\n")
            self._stream.flush()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            self.draw()


class ProgressLines:
    """Without a terminal: a plain count line each time another tenth of the jobs answered,
    its time counted as the report's Total Duration is."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self._total = total
        self._stream = stream
        self._answered = 0
        self._failed = 0
        self._next_line = min(total, max(1, int(total * PROGRESS_LINE_STEP)))
        self._run = RunClock()

    def __call__(self, outcome: JobOutcome) -> None:
        self._answered += 1
        self._failed += 0 if outcome.succeeded else 1
        self._run.heard(outcome)
        if self._answered >= self._next_line:
            elapsed = self._run.elapsed(final=True)
            print(
                f"answered {self._answered}/{self._total} jobs "
                f"({self._failed} failed) in {elapsed:.3f} s",
                file=self._stream,
                flush=True,
            )
            step = max(1, int(self._total * PROGRESS_LINE_STEP))
            self._next_line = min(self._total, (self._answered // step + 1) * step)
