"""The jobclient's progress display (``jobserver/jobclient/progress.py``)."""

from __future__ import annotations

import io
import itertools

import pytest

from jobserver.jobclient.progress import MIN_BAR_WIDTH, ProgressLine, ProgressLines, progress_line
from jobserver.jobclient.run import JobOutcome, RunReport


def test_finished_line_is_the_originals() -> None:
    """All answered: a full bar of '=', 100.00 % and whole seconds, one column short."""
    line = progress_line(50, 50, 1.7, columns=80)
    assert line == " 50 / 50 [" + "=" * 56 + "] 100.00 % 1s"
    assert len(line) == 79


@pytest.mark.parametrize(
    ("done", "total", "bar"),
    [
        (0, 4, "-" * 20),
        (1, 4, "====>" + "-" * 15),
        (1, 3, "======>" + "-" * 13),  # 6.67 of 20 columns: rounded up to 7
        (3, 4, "=" * 14 + ">-----"),
    ],
)
def test_partial_bar_is_filled_rounding_up_with_a_head(done: int, total: int, bar: str) -> None:
    """Part done: '=' up to a '>' head (rounded up), '-' for the rest, as the original drew it."""
    columns = 1 + len(" 0 / 4 ") + len("  0.00 % ") + 1 + len("0s") + 2 + 20
    line = progress_line(done, total, 0.4, columns)
    assert line == f" {done} / {total} [{bar}] {100 * done / total:6.2f} % 0s"


def test_line_keeps_its_length_as_counts_and_seconds_grow() -> None:
    """Every redraw covers the last: the bar gives up the room the numbers take."""
    lengths = {
        len(progress_line(done, 1000, elapsed, columns=100))
        for done, elapsed in itertools.product((0, 9, 10, 999, 1000), (0.0, 9.9, 10.0, 125.0))
    }
    assert lengths == {99}


def test_narrow_terminal_keeps_a_minimal_bar() -> None:
    """A terminal too narrow for the numbers still gets a bar of MIN_BAR_WIDTH."""
    assert MIN_BAR_WIDTH == 10
    assert progress_line(5, 10, 3.0, columns=20) == " 5 / 10 [====>-----]  50.00 % 3s"


def outcome(number: int) -> JobOutcome:
    return JobOutcome(number, 0.0, 0.1, failure="timed out")


async def test_live_line_is_redrawn_in_place_and_left_with_a_blank_line() -> None:
    """Each answer redraws the line after a carriage return; the end adds a blank line,
    its time the run's Total Duration (first request sent to last answer)."""
    stream = io.StringIO()  # no terminal behind it: 80 columns
    # Read at construction, at the start of the run, then at each answer's draw; the
    # last draw counts to the last answer, as the report does.
    clock = iter([0.0, 10.0, 10.0, 10.5, 11.2]).__next__
    progress = ProgressLine(2, stream, clock=clock)
    async with progress.shown():
        progress(JobOutcome(1, 10.1, 10.5, failure="timed out"))
        progress(JobOutcome(2, 10.2, 11.15, failure="timed out"))
    frames = stream.getvalue().removesuffix("\n\n").split("\r")
    assert frames == [
        "",
        progress_line(0, 2, 0.0, 80),
        progress_line(1, 2, 0.4, 80),
        progress_line(2, 2, 1.1, 80),
        progress_line(2, 2, 1.05, 80),
    ]
    assert stream.getvalue().endswith("100.00 % 1s\n\n")


def test_the_last_plain_line_shows_the_reports_total_duration() -> None:
    """The plain lines count from the first request sent, on the report's clock: the
    last one is the report's Total Duration."""
    stream = io.StringIO()
    progress = ProgressLines(3, stream)
    outcomes = [
        JobOutcome(1, 100.002, 100.5, failure="x"),
        JobOutcome(2, 100.0, 100.641606, failure="x"),
        JobOutcome(3, 100.001, 100.6, failure="x"),
    ]
    for answered in outcomes:
        progress(answered)
    total = RunReport("u", "a", tuple(outcomes)).total
    assert stream.getvalue().splitlines()[-1] == f"answered 3/3 jobs (3 failed) in {total:.3f} s"
    assert f"{total:.3f}" == "0.642"


def test_plain_lines_every_tenth_of_the_jobs() -> None:
    """Without a terminal a count line is printed per tenth of the jobs, ending at the total."""
    stream = io.StringIO()
    progress = ProgressLines(20, stream)
    for number in range(1, 21):
        progress(outcome(number))
    lines = stream.getvalue().splitlines()
    assert [line.split(" in ")[0] for line in lines] == [
        f"answered {n}/20 jobs ({n} failed)" for n in range(2, 21, 2)
    ]
