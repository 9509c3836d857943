"""The README's runnable examples, run as written against real servers, so that they
cannot drift from what the programs do.

Each ``sh`` block of curl examples runs against a job server and a proxy started for it
(the README's ports 8000 and 8001 become theirs); a command's output is checked against
the sample the README shows after it (``# {...}``, ``# HTTP/1.1 NNN``, ``# id: ... /
event: ...``): the status, the fields named and the words given. ``<id>`` and ``<ref>``
stand for the last job id and ref the examples printed. The polling example runs as a
script of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shlex
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import run_program

README = Path(__file__).parent.parent / "README.md"
WAIT = 30.0


def section(title: str) -> str:
    """The README's text from the heading ``title`` to the next heading of any level."""
    text = README.read_text()
    start = text.index(f"\n{title}\n")
    end = re.compile(r"\n#{2,4} ").search(text, start + len(title) + 2)
    return text[start : end.start() if end else len(text)]


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.DOTALL)


@dataclass
class Example:
    """One command of a block, and the sample of its output the README shows."""

    command: str
    sample: list[str] = field(default_factory=list)


def examples(block: str) -> Iterator[Example]:
    """The curl commands of a block (continuation lines joined), each with the comment
    lines after it and its own trailing comment."""
    lines = block.splitlines()
    current: Example | None = None
    index = 0
    while index < len(lines):
        line = lines[index]
        while line.endswith("\\"):
            index += 1
            line = line[:-1].rstrip() + " " + lines[index].strip()
        index += 1
        if line.startswith("#"):
            if current is not None:
                current.sample.append(line[1:].strip())
            continue
        if current is not None:
            yield current
        current = None
        if line.startswith("curl "):
            command, _, comment = line.partition("  # ")
            current = Example(command.strip(), [comment.strip()] if comment else [])
    if current is not None:
        yield current


@dataclass
class Servers:
    jobserver: str
    proxy: str
    last_id: str = ""
    last_ref: str = ""

    def localize(self, command: str) -> list[str]:
        command = command.replace("localhost:8000", self.proxy.removeprefix("http://"))
        command = command.replace("localhost:8001", self.jobserver.removeprefix("http://"))
        command = command.replace("<id>", self.last_id).replace("<ref>", self.last_ref)
        return shlex.split(command)

    def learn(self, output: str) -> None:
        if found := re.search(r'"id":"([^"]+)"', output):
            self.last_id = found.group(1)
        if found := re.search(r"/jobs/([A-Za-z0-9_-]+)", output):
            self.last_ref = found.group(1)


@contextlib.asynccontextmanager
async def servers(
    *jobserver_flags: str, proxy_flags: tuple[str, ...] = ()
) -> AsyncIterator[Servers]:
    async with (
        run_program("jobserver", *jobserver_flags) as jobserver,
        run_program("jobproxy", "--upstream-url", jobserver.url, *proxy_flags) as proxy,
    ):
        yield Servers(jobserver.url, proxy.url)


async def run(argv: list[str]) -> str:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), WAIT)
    assert process.returncode == 0, (argv, err)
    return out.decode()


def body_of(output: str) -> str:
    """The body of curl's output (after the head, with -i)."""
    return output.split("\r\n\r\n", 1)[1] if output.startswith("HTTP/") else output


def check(example: Example, output: str) -> None:
    """The output is what the sample says it is."""
    events = [name for sample in example.sample for name in re.findall(r"event: (\w+)", sample)]
    if events:
        assert re.findall(r"^event: (\w+)", output, re.MULTILINE) == events, output
        return
    for sample in example.sample:
        if sample.startswith("HTTP/1.1 "):
            assert output.startswith(sample.split(" ...")[0]), (example.command, output[:200])
        if (at := sample.find("{")) >= 0:
            shown, answer = sample[at:], json.loads(body_of(output))
            assert set(re.findall(r'"(\w+)":', shown.split("{", 2)[1])) <= set(answer), (
                example.command,
                answer,
            )
            for key, value in re.findall(r'"(error|detail|state|status)":"([^".]+)"', shown):
                assert answer[key] == value, (example.command, answer)


async def run_block(block: str, running: Servers) -> int:
    ran = 0
    for example in examples(block):
        output = await run(running.localize(example.command))
        check(example, output)
        running.learn(output)
        ran += 1
    return ran


async def test_the_curl_examples_run_as_written() -> None:
    """Every curl example of "Talking to the servers with curl"."""
    (block,) = blocks(section("### Talking to the servers with curl"), "sh")
    async with servers() as running:
        assert await run_block(block, running) == 12


async def test_the_prefer_and_stream_examples_run_as_written() -> None:
    """The 202 with its ref, the ref read back and long-polled, the stream."""
    (block,) = blocks(
        section("### Holding less: `Prefer`, `/jobs/{ref}` and a stream of the job's states"), "sh"
    )
    async with servers() as running:
        assert await run_block(block, running) == 4


async def test_the_predictions_examples_run_as_written() -> None:
    """The proxy in front of the simulator speaking the predictions dialect."""
    text = section("### Dialects: in front of any callback API")
    block = next(b for b in blocks(text, "sh") if "--dialect predictions" in b)
    flags = ("--dialect", "predictions")
    async with servers(*flags, proxy_flags=("--upstream-dialect", "predictions")) as running:
        assert await run_block(block, running) == 3


async def test_the_polling_example_runs_as_written(tmp_path: Path) -> None:
    """The polling example, a script of its own, prints the finished job's state."""
    (code,) = blocks(section("### Polling a job server yourself"), "python")
    async with run_program("jobserver", "--job-duration", "0.2") as jobserver:
        script = tmp_path / "poll.py"
        script.write_text(code.replace("http://127.0.0.1:8001", jobserver.url))
        output = await run([sys.executable, str(script)])
    assert output == "completed\n"


@pytest.mark.parametrize(
    ("block", "commands"),
    [
        ('curl -s a  # {}\ncurl -s b \\\n  -d x\n# {"k":1}\n', ["curl -s a", "curl -s b -d x"]),
        ("jobserver &\n# not a sample\ncurl c\n", ["curl c"]),
    ],
)
def test_examples_are_read_with_their_continuations_and_samples(
    block: str, commands: list[str]
) -> None:
    assert [example.command for example in examples(block)] == commands
