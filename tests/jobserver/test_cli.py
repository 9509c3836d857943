"""The ``jobserver`` command: verify, configuration errors, and the real server end to end."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import signal
from pathlib import Path

import httpx
import pytest

from bench.harness import script_path
from jobserver.__main__ import EXIT_OK, PROOF_INVALID, STARTUP_FAILURE, main
from jobserver.faults import RandomStreams
from jobserver.jobs import draw_job_id
from jobserver.proofs import PROOF_MISMATCH, CompletedJob, encode_bundle, make_proof
from tests.conftest import eventually, loopback_socket, run_program
from tests.jobserver.servers import (
    ORIGINAL_ACCOUNT,
    ORIGINAL_BUNDLE,
    callback_receiver,
    expected_signature,
)

SECRET = "cli-secret"
STARTED_AT = "2026-11-25T13:09:06.123Z"
WAIT = 20.0


def bundle(secret: str, jobs: int = 2) -> str:
    ids = [f"{index + 1:x}" * 13 for index in range(jobs)]
    return encode_bundle(
        CompletedJob(i, STARTED_AT, make_proof(secret.encode(), i, "acme", STARTED_AT)) for i in ids
    )


async def run_command(*argv: str, stdin: bytes = b"") -> tuple[int, str, str]:
    """Run the installed ``jobserver`` script; return exit code, stdout and stderr."""
    process = await asyncio.create_subprocess_exec(
        script_path("jobserver"),
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin), WAIT)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def test_verify_valid_bundle_exits_0_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """verify prints one line and exits 0 for a bundle made with the configured secret."""
    argv = ["--secret", SECRET, "verify", bundle(SECRET), "--account", "acme"]
    assert main(argv, environ={}) == EXIT_OK
    assert capsys.readouterr().out == "VALID: 2 jobs of account 'acme', all proofs check\n"


def test_verify_forged_bundle_exits_1_naming_each_job(capsys: pytest.CaptureFixture[str]) -> None:
    """verify exits 1 with a line per job whose proof does not match when the secret differs."""
    argv = ["--secret", SECRET, "verify", bundle("other"), "--account", "acme"]
    assert main(argv, environ={}) == PROOF_INVALID
    assert capsys.readouterr().out.splitlines() == [
        "INVALID: 2 of 2 proofs do not check for account 'acme'",
        f"  job {'1' * 13}: {PROOF_MISMATCH}",
        f"  job {'2' * 13}: {PROOF_MISMATCH}",
    ]


def test_verify_reads_the_original_clients_bundle(capsys: pytest.CaptureFixture[str]) -> None:
    """The original client's bundle is read, and each of its 50 proofs reported as not matching."""
    argv = ["verify", ORIGINAL_BUNDLE, "--account", ORIGINAL_ACCOUNT]
    assert main(argv, environ={}) == PROOF_INVALID
    first, *jobs = capsys.readouterr().out.splitlines()
    assert first == "INVALID: 50 of 50 proofs do not check for account 'fozzie@muppets.com'"
    assert len(jobs) == 50
    assert all(line.endswith(f": {PROOF_MISMATCH}") for line in jobs)


def test_verify_garbage_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    """Text that is not a bundle is invalid, exit 1."""
    assert main(["verify", "not-a-bundle", "--account", "acme"], environ={}) == PROOF_INVALID
    assert capsys.readouterr().out.startswith("INVALID: not a proof bundle")


@pytest.mark.parametrize(
    "argv",
    [["verify", "H4sI"], ["verify", "H4sI", "--account", ""], ["--account", "acme"]],
)
def test_account_goes_with_verify_only(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """verify without --account, or --account without verify, is a usage error (exit 2)."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv, environ={})
    assert exit_info.value.code == 2
    assert "--account" in capsys.readouterr().err


def test_verify_reads_stdin_and_uses_env_and_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """verify - reads the bundle from stdin; the secret comes from env or --config."""
    monkeypatch.setattr("sys.stdin", io.StringIO(bundle(SECRET) + "\n"))
    assert main(["verify", "-", "--account", "acme"], environ={"JOBSERVER_SECRET": SECRET}) == 0
    config = tmp_path / "js.toml"
    config.write_text(f'secret = "{SECRET}"\n')
    argv = ["verify", bundle(SECRET), "--account", "acme"]
    assert main([*argv, "--config", str(config)], environ={}) == EXIT_OK
    assert main(argv, environ={"JOBSERVER_CONFIG": str(config)}) == EXIT_OK
    assert capsys.readouterr().out.count("VALID") == 3


def test_bad_flag_value_exits_nonzero_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """A bad setting exits STARTUP_FAILURE with one stderr line naming key and value."""
    assert main(["--failure-rate", "2"], environ={}) == STARTUP_FAILURE
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "failure_rate" in err
    assert "'2'" in err


def test_unknown_command_is_a_usage_error() -> None:
    """Anything but 'verify PROOF' as a command is a usage error (exit 2)."""
    with pytest.raises(SystemExit) as exit_info:
        main(["frobnicate"], environ={})
    assert exit_info.value.code == 2


async def test_script_verify_exit_codes() -> None:
    """The installed script: verify exits 0 for a valid bundle from stdin, 1 for a forged one."""
    code, out, _ = await run_command(
        "--secret", SECRET, "verify", "-", "--account", "acme", stdin=bundle(SECRET).encode()
    )
    assert (code, out.count("\n")) == (0, 1)
    code, out, _ = await run_command(
        "--secret", SECRET, "verify", bundle("forged"), "--account", "acme"
    )
    assert (code, out.count("\n")) == (1, 3)


async def test_verify_into_a_closed_pipe_keeps_its_verdict_without_a_traceback() -> None:
    """``jobserver verify ... | head -1``: the reader is gone before anything is written
    (the pipe's read end is closed first, so every write fails); no traceback, and the
    exit code is still the verdict."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        process = await asyncio.create_subprocess_exec(
            script_path("jobserver"),
            *("--secret", SECRET, "verify", bundle("forged", jobs=50), "--account", "acme"),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=write_end,
            stderr=asyncio.subprocess.PIPE,
        )
    finally:
        os.close(write_end)
    _, err = await asyncio.wait_for(process.communicate(), WAIT)
    assert (process.returncode, err.decode()) == (PROOF_INVALID, "")


async def test_script_bad_config_exits_nonzero_with_one_line(tmp_path: Path) -> None:
    """The installed script refuses an unknown TOML key: exit 3, one stderr line."""
    config = tmp_path / "bad.toml"
    config.write_text("colour = 'blue'\n")
    code, _, err = await run_command("--config", str(config))
    assert code == STARTUP_FAILURE
    assert err.strip().count("\n") == 0
    assert "colour" in err
    assert "blue" in err


async def test_script_port_in_use_exits_nonzero_with_one_line() -> None:
    """A port that cannot be bound is a one-line startup failure."""
    with loopback_socket() as taken:
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = await run_command("--host", "127.0.0.1", "--port", str(port))
    assert code == STARTUP_FAILURE
    assert err.strip().count("\n") == 0
    assert "cannot listen" in err


async def test_real_server_answers_and_stops_cleanly_on_sigterm() -> None:
    """jobserver on --port 0 announces its real port, runs a job, and exits 0 on SIGTERM."""
    async with run_program("jobserver", "--job-duration", "0.05", "--secret", SECRET) as server:
        assert not server.url.endswith(":0")
        async with httpx.AsyncClient(base_url=server.url, timeout=WAIT) as client:
            health = await client.get("/healthz")
            job = (await client.post("/start", json={"account": "acme", "wait": True})).json()
        assert health.json()["status"] == "ok"
        assert job["proof"] == make_proof(SECRET.encode(), job["id"], "acme", job["startedAt"])
        assert await server.stop(signal.SIGTERM) == 0
    assert "stopped: 1 jobs completed" in server.log_tail()


async def test_shutdown_answers_held_requests_503_and_is_bounded() -> None:
    """On SIGTERM a wait: true request held for a long job gets 503 shutting_down; exit 0."""
    first_id = draw_job_id(RandomStreams(1))
    flags = ("--job-duration", "60", "--shutdown-timeout", "5", "--seed", "1")
    async with (
        run_program("jobserver", *flags) as server,
        httpx.AsyncClient(base_url=server.url, timeout=WAIT) as client,
    ):
        held = asyncio.create_task(client.post("/start", json={"account": "a", "wait": True}))
        # The seeded id of the held job shows up in /status once the server is holding it;
        # each probe is a round trip, so this loop needs no sleep.
        async with asyncio.timeout(WAIT):
            while (await client.get(f"/status/{first_id}")).status_code == 404:
                pass
        assert await server.stop(signal.SIGTERM) == 0
        response = await held
    assert response.status_code == 503
    assert response.json()["error"] == "shutting_down"
    assert "1 cancelled" in server.log_tail()


async def test_real_server_stops_cleanly_on_sigint() -> None:
    """SIGINT stops the server with exit 0 as well."""
    async with run_program("jobserver") as server:
        assert await server.stop(signal.SIGINT) == 0


async def test_sighup_and_sigusr1_leave_the_server_serving() -> None:
    """SIGHUP and SIGUSR1 are logged and ignored; a double SIGINT still stops it, exit 0,
    with no traceback."""
    async with run_program("jobserver", "--job-duration", "0.01") as server:
        for sig in (signal.SIGHUP, signal.SIGUSR1):
            server.process.send_signal(sig)
        await eventually(lambda: "SIGUSR1 ignored" in server.log_tail())
        async with httpx.AsyncClient(base_url=server.url, timeout=WAIT) as client:
            job = (await client.post("/start", json={"account": "a", "wait": True})).json()
        assert job["state"] == "completed"
        server.process.send_signal(signal.SIGINT)
        assert await server.stop(signal.SIGINT) == 0
    assert "Traceback" not in server.log_tail()


async def test_a_head_over_the_limit_is_431() -> None:
    """The job server refuses a request head over max_head_size with 431 JSON."""
    async with run_program("jobserver", "--max-head-size", "2048") as server:
        host, port = server.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(f"POST /start HTTP/1.1\r\nhost: x\r\nx-big: {'a' * 3000}\r\n\r\n".encode())
        async with asyncio.timeout(WAIT):
            answer = await reader.read()
        writer.close()
    assert answer.startswith(b"HTTP/1.1 431")
    assert b'"request_head_too_large"' in answer


async def test_real_server_delivers_signed_callbacks_and_honours_env() -> None:
    """Configured through env, the real server POSTs a signed callback to a real receiver."""
    secret = "whsec_" + base64.b64encode(b"k" * 24).decode()
    env = {"JOBSERVER_CALLBACK_SECRET": secret, "JOBSERVER_JOB_DURATION": "0.05"}
    async with (
        callback_receiver() as receiver,
        run_program("jobserver", "--seed", "1", env=env) as server,
        httpx.AsyncClient(base_url=server.url, timeout=WAIT) as client,
    ):
        started = await client.post("/start", json={"account": "acme", "callback": receiver.url})
        delivery = await receiver.next()
    assert json.loads(delivery.body)["id"] == started.json()["id"]
    assert delivery.headers["webhook-signature"] == expected_signature(
        secret, delivery.headers, delivery.body
    )
