"""The ``jobclient`` command line (``jobserver/jobclient/__main__.py``), end to end."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios

import pytest
from starlette.responses import Response

from bench.harness import script_path
from jobserver.jobclient.__main__ import EXIT_FAILED, EXIT_PASSED, EXIT_USAGE, main
from tests.conftest import closed_port
from tests.jobserver.jobclient.servers import (
    ACCOUNT,
    URL,
    fake_job_server,
    proofs_check,
    serve,
)

WAIT = 30.0
# The original client's lines, with their variable parts.
PROGRESS_FRAME = re.compile(r" (\d+) / 50 \[([=>-]+)\] +(\d+\.\d\d) % (\d+)s")
FINAL_FRAME = re.compile(r" 50 / 50 \[=+\] 100\.00 % \d+s")
AVERAGE_LINE = re.compile(r"Average Duration: \d+\.\d{9} seconds")
TOTAL_LINE = re.compile(r"Total Duration: \d+\.\d{9} seconds")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--account", ACCOUNT], "--url"),
        (["--url", URL], "--account"),
        (["--url", URL, "--account", ""], "--account"),
        (["--url", URL, "--account", ACCOUNT, "--jobs", "0"], "--jobs"),
        (["--url", URL, "--account", ACCOUNT, "--jobs", "many"], "--jobs"),
        (["--url", URL, "--account", ACCOUNT, "--deadline", "0"], "--deadline"),
        (["--url", URL, "--account", ACCOUNT, "--deadline", "-1"], "--deadline"),
        (["--url", URL, "--account", ACCOUNT, "--deadline", "nan"], "--deadline"),
        (["--url", URL, "--account", ACCOUNT, "--timeout", "0"], "--timeout"),
        (["--url", "/start", "--account", ACCOUNT], "--url"),
        (["--url", "ftp://host/start", "--account", ACCOUNT], "--url"),
        (["--url", "http://", "--account", ACCOUNT], "--url"),
        (["--url", URL, "--account", ACCOUNT, "--bogus"], "--bogus"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad command line exits 2 with a single ``jobclient: error:`` line naming the option."""
    assert main(argv) == EXIT_USAGE
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.splitlines()) == 1
    assert err.startswith("jobclient: error: ")
    assert message in err


async def test_main_passes_against_a_real_server(capsys: pytest.CaptureFixture[str]) -> None:
    """main exits 0 and prints PASSED and a verifiable proof against a good server."""
    async with serve(fake_job_server(delay=0.05)) as url:
        code = await asyncio.to_thread(main, ["--url", url, "--account", ACCOUNT, "--jobs", "10"])
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert code == EXIT_PASSED
    assert lines[0] == "Succeeded: 10"
    assert AVERAGE_LINE.fullmatch(lines[1])
    assert TOTAL_LINE.fullmatch(lines[2])
    assert lines[3:7] == ["", "WORK SAMPLE RESULT: PASSED", "", "Proof :"]
    assert proofs_check(lines[7]) == 10
    assert len(lines) == 8
    # Without a terminal, progress is plain count lines on stderr, ending at the total.
    assert err.splitlines()[-1].startswith("answered 10/10 jobs (0 failed)")


async def test_main_fails_over_deadline(capsys: pytest.CaptureFixture[str]) -> None:
    """main exits 1 with the deadline reason when the run is too slow."""
    async with serve(fake_job_server(delay=0.1)) as url:
        argv = ["--url", url, "--account", ACCOUNT, "--jobs", "3", "--deadline", "0.01"]
        code = await asyncio.to_thread(main, argv)
    out = capsys.readouterr().out
    assert code == EXIT_FAILED
    assert "WORK SAMPLE RESULT: FAILED\n" in out
    assert "over the 0.01 s deadline" in out
    assert "Proof" not in out


def test_main_reports_connection_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """An unreachable URL gives per-job reasons and exit 1, never a traceback."""
    with closed_port() as port:
        code = main(
            ["--url", f"http://127.0.0.1:{port}/start", "--account", ACCOUNT, "--jobs", "2"]
        )
    out, err = capsys.readouterr()
    assert code == EXIT_FAILED
    assert "Failed: 2\n  job 1: connection refused\n  job 2: connection refused\n" in out
    assert "Reason: 2 jobs failed" in out
    assert "Traceback" not in out + err


async def test_main_json_output(capsys: pytest.CaptureFixture[str]) -> None:
    """--json prints exactly one JSON object on stdout and no progress at all."""
    async with serve(fake_job_server()) as url:
        argv = ["--url", url, "--account", ACCOUNT, "--jobs", "5", "--json"]
        code = await asyncio.to_thread(main, argv)
    out, err = capsys.readouterr()
    document = json.loads(out)
    assert code == EXIT_PASSED
    assert err == ""
    assert out.count("\n") == 1
    assert document["result"] == "PASSED"
    assert (document["succeeded"], document["failed"], document["failures"]) == (5, 0, [])
    assert document["reasons"] == []
    assert document["deadline"] == 5.0
    assert proofs_check(document["proof"]) == 5


async def test_main_json_output_on_failure(capsys: pytest.CaptureFixture[str]) -> None:
    """--json on FAILED gives the failures, the reasons, a null proof and exit 1."""

    async def answer(number: int) -> Response:
        return Response("not json", media_type="text/plain")

    async with serve(fake_job_server(answer)) as url:
        argv = ["--url", url, "--account", ACCOUNT, "--jobs", "2", "--json"]
        code = await asyncio.to_thread(main, argv)
    document = json.loads(capsys.readouterr().out)
    assert code == EXIT_FAILED
    assert document["result"] == "FAILED"
    assert document["reasons"] == ["2 jobs failed"]
    assert document["failures"] == [
        {"job": 1, "reason": "response is not JSON"},
        {"job": 2, "reason": "response is not JSON"},
    ]
    assert document["proof"] is None


async def read_terminal(master: int) -> str:
    """Everything written to a pty, until the last process holding its other end is gone."""
    loop = asyncio.get_running_loop()
    chunks: list[bytes] = []
    closed: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: nobody holds the terminal any more
            chunk = b""
        if chunk:
            chunks.append(chunk)
        elif not closed.done():
            closed.set_result(None)

    loop.add_reader(master, readable)
    try:
        await asyncio.wait_for(closed, WAIT)
    finally:
        loop.remove_reader(master)
    # The terminal turns each "\n" into "\r\n"; a lone "\r" is the client's own.
    return b"".join(chunks).decode().replace("\r\n", "\n")


async def test_on_a_terminal_speaks_like_the_original() -> None:
    """In a terminal: the original's live line, then its summary, result and proof, line by line."""
    columns = 100
    master, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    try:
        async with serve(fake_job_server(delay=0.05)) as url:
            # A deadline far beyond the run: the form is under test here, not the speed.
            argv = ["--url", url, "--account", ACCOUNT, "--deadline", "60"]
            process = await asyncio.create_subprocess_exec(
                script_path("jobclient"), *argv, stdin=terminal, stdout=terminal, stderr=terminal
            )
            os.close(terminal)
            terminal = -1
            output = await read_terminal(master)
            code = await asyncio.wait_for(process.wait(), WAIT)
    finally:
        os.close(master)
        if terminal != -1:
            os.close(terminal)
    live, *lines = output.split("\n")
    first, *frames = live.split("\r")
    assert code == EXIT_PASSED
    assert first == ""
    assert all(PROGRESS_FRAME.fullmatch(frame) for frame in frames), frames
    assert all(len(frame) == columns - 1 for frame in frames)
    assert FINAL_FRAME.fullmatch(frames[-1])
    assert lines[:2] == ["", "Succeeded: 50"]
    assert AVERAGE_LINE.fullmatch(lines[2])
    assert TOTAL_LINE.fullmatch(lines[3])
    assert lines[4:8] == ["", "WORK SAMPLE RESULT: PASSED", "", "Proof :"]
    assert proofs_check(lines[8]) == 50
    assert lines[9:] == [""]


def test_jobclient_runs_without_rich() -> None:
    """The jobclient needs no rich: with it unimportable, the client still loads."""
    # httpx itself imports rich when it is there (for its own command line), so the check
    # is that our modules load once rich cannot be imported at all.
    script = "import sys; sys.modules['rich'] = None; import jobserver.jobclient.__main__"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=WAIT
    )
    assert (result.returncode, result.stderr) == (0, "")
