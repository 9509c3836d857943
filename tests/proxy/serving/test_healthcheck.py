"""The health check follows the port the proxy really listens on; the image runs it."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping
from pathlib import Path

import pytest
from starlette.types import ASGIApp, Receive, Scope, Send

from proxy.serving.healthcheck import HEALTHY, UNHEALTHY, main
from tests.conftest import closed_port, run_program, run_server

ROOT = Path(__file__).parents[3]


def health_app(status: int) -> ASGIApp:
    """An app that answers every request with ``status``, as a proxy's /healthz would."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": status, "headers": []})
            await send({"type": "http.response.body", "body": b"{}"})

    return app


async def check(environ: Mapping[str, str]) -> int:
    """Run the check as the image does, in a thread: its HTTP call blocks."""
    return await asyncio.to_thread(main, ["--timeout", "5"], environ)


def port_of(url: str) -> str:
    return url.rsplit(":", 1)[1]


async def test_the_check_asks_the_recorded_address(tmp_path: Path) -> None:
    """The URL the server recorded wins over a port the settings give (a flag they miss)."""
    recorded = tmp_path / "address"
    async with run_server(health_app(200)) as url:
        recorded.write_text(url + "\n")
        with closed_port() as elsewhere:
            environ = {"JOBPROXY_ADDRESS_FILE": str(recorded), "JOBPROXY_PORT": str(elsewhere)}
            assert await check(environ) == HEALTHY


async def test_without_a_recorded_address_the_check_asks_the_settings(tmp_path: Path) -> None:
    """No file yet (or none configured): the check asks the port of JOBPROXY_PORT."""
    async with run_server(health_app(200)) as url:
        missing = str(tmp_path / "not-written")
        environ = {"JOBPROXY_PORT": port_of(url), "JOBPROXY_ADDRESS_FILE": missing}
        assert await check(environ) == HEALTHY
        assert await check({"JOBPROXY_PORT": port_of(url)}) == HEALTHY


async def test_a_proxy_that_does_not_answer_200_is_unhealthy(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A refused connection or an answer other than 200 is exit 1, with the reason."""
    with closed_port() as port:
        assert await check({"JOBPROXY_PORT": str(port)}) == UNHEALTHY
    async with run_server(health_app(503)) as url:
        assert await check({"JOBPROXY_PORT": port_of(url)}) == UNHEALTHY
    assert "503" in capsys.readouterr().err


async def test_a_bad_setting_is_unhealthy(capsys: pytest.CaptureFixture[str]) -> None:
    """Settings the proxy would refuse make the check fail, saying which one."""
    assert await check({"JOBPROXY_PORT": "eighty"}) == UNHEALTHY
    assert "bad setting port = 'eighty'" in capsys.readouterr().err


async def test_the_server_records_its_address_while_it_serves(tmp_path: Path) -> None:
    """jobproxy writes its URL to address_file once it listens and removes it on stop."""
    recorded = tmp_path / "address"
    async with run_program(
        "jobproxy", "--address-file", str(recorded), "--upstream-url", "http://127.0.0.1:9"
    ) as proxy:
        assert recorded.read_text() == f"{proxy.url}\n"
        assert await check({"JOBPROXY_ADDRESS_FILE": str(recorded)}) == HEALTHY
        assert await proxy.stop() == 0
    assert not recorded.exists()


async def test_a_proxy_that_cannot_record_its_address_still_serves(tmp_path: Path) -> None:
    """An address file that cannot be written is a warning: the proxy serves, and the
    check then asks the port of the settings."""
    unwritable = tmp_path / "missing-folder" / "address"
    async with run_program(
        "jobproxy", "--address-file", str(unwritable), "--upstream-url", "http://127.0.0.1:9"
    ) as proxy:
        environ = {"JOBPROXY_ADDRESS_FILE": str(unwritable), "JOBPROXY_PORT": port_of(proxy.url)}
        assert await check(environ) == HEALTHY
    assert f"cannot record the address in {unwritable}" in proxy.log_tail()


def test_the_image_checks_health_with_this_module() -> None:
    """The Dockerfile's HEALTHCHECK runs proxy.healthcheck and names the address file."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    healthcheck = re.search(r"^HEALTHCHECK .*\\\n\s+CMD (\[.*\])$", dockerfile, re.MULTILINE)
    assert healthcheck, "no HEALTHCHECK ... CMD [...] in the Dockerfile"
    assert json.loads(healthcheck[1]) == ["python", "-m", "proxy.serving.healthcheck"]
    assert re.search(r"JOBPROXY_ADDRESS_FILE=/\S+", dockerfile)
